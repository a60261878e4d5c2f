"""Metrics: DAVIS J&F for video object segmentation, COCO-style scores for instance segmentation."""
