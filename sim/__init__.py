"""The simulated accelerator (`device: sim`): the real control plane with a calibrated cost
model (cost_model.py) in place of model compute (gpu.py); its figures are always simulated."""
