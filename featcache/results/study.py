"""The study's published figures (theirs, not ours): mean test IoU and training seconds per size of modes E and F,
on the ISIC 2017 test set, RTX 4070 Ti Super."""

STUDY_IOU = {
    "E": {2000: 0.670, 160: 0.640, 80: 0.633, 40: 0.580, 20: 0.527, 10: 0.497},
    "F": {2000: 0.630, 160: 0.634, 80: 0.610, 40: 0.587, 20: 0.539, 10: 0.507},
}
STUDY_SECONDS = {
    "E": {2000: 1638.6, 160: 347.6, 80: 293.6, 40: 260.4, 20: 275.0, 10: 175.6},
    "F": {2000: 732.7, 160: 178.2, 80: 151.8, 40: 148.4, 20: 151.5, 10: 93.9},
}
