"""Format readers and writers: the Kaggle BraTS2020 HDF5 slices and CSVs, NIfTI cases and label files. Formats only: no cache."""
