"""A DINO perceptual loss on the x0 prediction (after PixelGen): 1 - cos between a frozen DINOv2's
patch tokens of the prediction and of the clean image. The plain function below works without
prx; ``prx_dino_perceptual.plugin`` registers the "dino_perceptual" technique (see CARD.md)."""
from prx_dino_perceptual.config import DinoPerceptualConfig
from prx_dino_perceptual.loss import dino_perceptual_loss

__all__ = ["DinoPerceptualConfig", "dino_perceptual_loss"]
