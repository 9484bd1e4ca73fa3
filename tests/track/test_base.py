"""The parameters as the trackers store them."""

from featcache.track import flatten_params


def test_params_nest_into_dotted_keys_and_lists_into_text():
    flat = flatten_params({"encoder": {"arch": "vit", "blocks": {"n": 12}}, "layers": (8, 9), "epochs": None, "x": 1.5})
    assert flat == {"encoder.arch": "vit", "encoder.blocks.n": 12, "layers": "8,9", "x": 1.5}
