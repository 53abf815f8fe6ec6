"""Object detection: box utilities, VOC evaluation, a compact centre-point detector,
synthetic and PASCAL VOC detection domains (see docs/detection.md)."""
