"""Torch-free presentation of a report: the HTML page, the markdown summary, overlays."""
