"""A Qwen2.5-VL processor (image processor + tokenizer + chat template) that loads without torchvision.

transformers' ``Qwen2_5_VLProcessor`` always builds a video processor, and every video processor needs
torchvision (not installable next to the CPU torch here), so ``AutoProcessor.from_pretrained`` fails on a
checkpoint of this project. What outside tools (TRL's GRPOTrainer, plain ``transformers`` scripts) need
is the image half: :class:`Qwen2_5_VLImageTextProcessor` is ``Qwen2_5_VLProcessor`` without the video
processor (``videos=`` is refused), with transformers' own Qwen2-VL image processor (its PIL backend
when torchvision is absent), which ``tests/data/test_vision.py`` checks the project's preprocessing against.

``save_processor(dir)`` writes it beside a checkpoint: ``processor_config.json`` (the image processor's
settings, ``auto_map``) and this file, so that in any process::

    AutoProcessor.from_pretrained(dir, trust_remote_code=True)

returns it (a checkpoint that brings its processor as code needs ``trust_remote_code``, the
Hugging Face convention). This file imports only ``transformers``: it is copied into checkpoints.
"""

from __future__ import annotations

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

PROCESSOR_FILES = ("processor_config.json", "hf_processor.py")
"""What :func:`save_processor` adds to a checkpoint directory."""


class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` with images and text only (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Qwen2_5_VLProcessor.__init__ hands a video processor to ProcessorMixin, which type-checks it against
        # the torchvision-only video classes: set its token fields here and skip it.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(self.video_token)
        self.video_processor = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} has no video processor (it is built for image prompts)")
        return super().__call__(images=images, text=text, **kwargs)


def qwen2_vl_image_processor(min_pixels: int = 7056, max_pixels: int = 1048576, patch_size: int = 14,
                             merge_size: int = 2, temporal_patch_size: int = 2):
    """transformers' Qwen2-VL image processor with these bounds (PIL backend where torchvision is absent)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Image
    except ImportError:  # older transformers: the slow processor is the PIL one
        from transformers import Qwen2VLImageProcessor as Image
    return Image(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=merge_size,
                 temporal_patch_size=temporal_patch_size)


def save_processor(out_dir, tokenizer_dir=None, min_pixels: int = 7056, max_pixels: int = 1048576,
                   patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2):
    """Write the processor of the tokenizer in ``tokenizer_dir`` (default ``out_dir``) into ``out_dir``; returns it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or out_dir))
    image = qwen2_vl_image_processor(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size)
    processor = Qwen2_5_VLImageTextProcessor(image_processor=image, tokenizer=tokenizer,
                                             chat_template=tokenizer.chat_template)
    type(processor).register_for_auto_class("AutoProcessor")  # save_pretrained copies this file + auto_map
    processor.save_pretrained(str(out_dir))
    return processor


def load_processor(path):
    """The processor of a checkpoint written by :func:`save_processor` (or any AutoProcessor directory)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
