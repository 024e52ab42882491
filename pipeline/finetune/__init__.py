"""``featurebeam finetune``: from a linear probe on frozen features to a fine-tuned top of the backbone."""
