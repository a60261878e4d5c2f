"""Datasets: readers for the DAVIS-2017 and COCO layouts, and the synthetic stand-ins."""
