"""clips_tower: the CLIPS model (ViT image tower, text tower, captioner), its tokenizer,
image transforms and checkpoint formats.

    import clips_tower
    model = clips_tower.create_model("clips-vit-l-14-336")     # random init
    model = clips_tower.load_model(path)                         # own or official open_clip checkpoint
    tokenizer = clips_tower.load_tokenizer(path)
    preprocess = clips_tower.image_transform(model.config, train=False)
"""

from .checkpoint import CheckpointError, load_model, save_model
from .config import CaptionerConfig, CLIPSConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, load_config
from .model import CLIPS, create_model
from .registry import get_model_config, list_models, register_model_config
from .tokenizer import CLIPSTokenizer, load_tokenizer
from .transforms import image_transform

__all__ = [
    "CLIPS", "CLIPSConfig", "CLIPSTokenizer", "CaptionerConfig", "CheckpointError", "ConfigError",
    "PreprocessConfig", "TextConfig", "VisionConfig", "create_model", "get_model_config", "image_transform",
    "list_models", "load_config", "load_model", "load_tokenizer", "register_model_config", "save_model",
]
