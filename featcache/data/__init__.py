"""Input data: the layouts of ISIC 2017, ISIC 2018 and plain folders indexed into samples and splits, images and
masks read and resized, and synthetic datasets in the ISIC 2017 layout."""

from featcache.data.layouts import IMAGE_EXTENSIONS, Sample, SampleIndex, SplitConfig, find_samples
from featcache.data.loading import SampleDataset, load_image, load_mask, load_mask_full
from featcache.data.synth import SynthConfig, SynthReport, synthesize

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "SampleDataset",
    "SampleIndex",
    "SplitConfig",
    "SynthConfig",
    "SynthReport",
    "find_samples",
    "load_image",
    "load_mask",
    "load_mask_full",
    "synthesize",
]
