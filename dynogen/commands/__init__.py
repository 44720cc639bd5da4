"""What each command does beyond the pipeline's stages: estimate (the dry run), call, inspect."""
