"""An example user package: a loader of a tab-separated file and a network builder, imported by
the pipeline from `code.paths`."""
