"""featcache: few-shot segmentation with a frozen encoder and a feature store."""

__version__ = "0.1.0"
