"""The published models the committee uses unless told otherwise: the settings' defaults, and what
`build-offline` writes twins of, from one place."""

DETECTOR_MODEL = "yolov8n.pt"  # yolov8m.pt on a GPU
CLIP_ARCHITECTURE, CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
DOG_MODEL = "prithivMLmods/Dog-Breed-120"
CAT_MODEL = "dima806/67_cat_breeds_image_detection"
# BioCLIP (MIT, OpenCLIP ViT-B/16, the Tree of Life's taxa with kingdom to species and common names); the iNat21
# ViT-L/14-336 (non-commercial, 10,000 species, 10.7x the cat expert's cost per crop) stays selectable.
WILDLIFE_MODEL = "hf-hub:imageomics/bioclip"
INAT21_WILDLIFE_MODEL = "timm/vit_large_patch14_clip_336.laion2b_ft_augreg_inat21"
CORAL_MODEL = "akridge/noaa-esd-coral-bleaching-vit-classifier-v1"
# The referee (Apache-2.0, transformers' own SmolVLM classes, no remote code; under 1 GB on a GPU).
REFEREE_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
