"""The per-sample parameter row: the contract between the pipeline's random draws and the
augmentation code that applies them (the CPU engine's fused loops, the batched torch chain, the
Triton colour kernel).

Each (sample, view) gets one float32 row of ``NPARAM`` values laid out by the ``P_*`` column
indices below; a batch of rows is a ``[B, NPARAM]`` tensor. The pipeline fills them
(``selfsup.pipeline.params.draw_params``).
"""

P_Y0, P_X0, P_H, P_W = 0, 1, 2, 3  # crop box in the decoded image (pixels)
P_FLIP = 4  # 1: mirror horizontally
P_JITTER = 5  # 1: apply colour jitter
P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE = 6, 7, 8, 9  # jitter factors
P_ORDER = 10  # 4 columns: the jitter ops in the order applied, as the op codes below
P_GRAY = 14  # 1: convert to 3-channel grayscale
P_BLUR_SIGMA = 15  # Gaussian blur sigma in pixels; 0: no blur
P_SOLARIZE = 16  # 1: solarize (x >= 0.5 -> 1 - x)
P_MASK = 17  # 1: replace the background (saliency masking, ReLICv2)
P_FILL = 18  # 3 columns: the background's replacement colour, RGB in [0, 1]
NPARAM = 21

# Op codes stored in the P_ORDER columns.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL
