"""What can vary: knob definitions (a YAML per model family) and the transforms that apply a
candidate (plain per-layer knobs) to a model. Nothing here imports the other edgesearch folders."""
