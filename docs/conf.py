"""Sphinx configuration for racefree's documentation (`make docs`).

The pages are Markdown (MyST); the build needs no network.
"""

project = "racefree"
author = "racefree contributors"
copyright = "racefree contributors"

extensions = ["myst_parser"]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links such as [Supported versions](django-suite.md#supported-versions)
# resolve to the heading's anchor, as they do on GitHub.
myst_heading_anchors = 4

html_theme = "furo"
html_title = "racefree"
html_static_path: list[str] = []
