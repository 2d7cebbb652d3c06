"""Labelled image sets: readers for the benchmark formats, a torch Dataset, and an image check."""

from capnet.data.dataset import ImageDataset, check_images
from capnet.data.formats import (
    read_class_names,
    read_coco,
    read_csv,
    read_id_list,
    read_list_file,
    read_nus_wide,
    read_nus_wide_csv,
    read_voc,
)
from capnet.data.records import DataError, Records

__all__ = [
    "DataError",
    "ImageDataset",
    "Records",
    "check_images",
    "read_class_names",
    "read_coco",
    "read_csv",
    "read_id_list",
    "read_list_file",
    "read_nus_wide",
    "read_nus_wide_csv",
    "read_voc",
]
