"""ISBI 2012 challenge metrics, IoU and the cell-tracking SEG measure (pure per-slice functions)."""
