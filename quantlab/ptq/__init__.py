"""Weight-only PTQ's sensitivity schemes (Huang et al., Output Sensitivity-Aware DETR
Quantization) and the Fisher schemes (Yang et al. 2024): what each traces, against which
weights, and the bits per layer the ILP gives it. Shared by --mode ptq and --mode fisher."""
