"""Holds only the batch-input sitecustomize.py; a package so setuptools ships it (see hooks.batch_site_dir)."""
