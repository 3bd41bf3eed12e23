"""The committee around the models: routing crops to experts, labelling, CLIP zero-shot scenes and second opinions,
embedding checks. Plain Python over model outputs; the models themselves are in `vision/models`."""
