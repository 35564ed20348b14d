"""An example user package: a network builder the pipeline imports from `code.paths`."""
