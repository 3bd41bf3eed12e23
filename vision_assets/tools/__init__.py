"""What the CLI offers beside the pipeline: offline_models.py builds random-weight twins of the default models
(`vision-assets models build-offline`), for machines without network, for trying it, and for the test suite."""
