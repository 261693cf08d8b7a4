"""Data: MMR1 records -> chat prompts with image tokens -> Samples / packed SFT batches.

Modules: ``records`` (JSONL/Parquet readers, bad-record policy), ``vision`` (Qwen2.5-VL image
preprocessing, Pillow path), ``dali`` (DALI path, imported lazily), ``resample`` (Pillow-exact bicubic
on any device), ``chat`` (template, MMR1 system prompt, pad expansion, SFT labels), ``tokenizer``
(tiny Qwen-style tokenizer), ``dataset`` (RL/SFT random-access datasets), ``packing``, ``loader``,
``synthetic`` (the demo task). See docs/data.md.
"""

from megatron_mmr1.utils.lazy import lazy_exports

# Lazy: ``import megatron_mmr1.data.sample`` (reward workers) stays light.
__all__, __getattr__ = lazy_exports(__name__, {
    "chat": ["IGNORE_INDEX", "MMR1_SYSTEM_PROMPT", "ChatFormatter", "PromptError", "render_chat"],
    "dataset": ["RLDataset", "SFTDataset", "SFTExample", "SampleBatch", "build_dataset"],
    "loader": ["DataLoaderState", "ResumableBatchSampler"],
    "packing": ["PackedBatch", "collate_packed", "pack_samples", "plan_packs"],
    "records": ["BadRecordError", "BadRecords", "RecordSource", "read_records"],
    "sample": ["Sample", "Status"],
    "tokenizer": ["build_tokenizer", "load_tokenizer"],
    "vision": ["ImageError", "PillowImageProcessor", "ProcessedImages", "VisionSpec", "build_image_processor",
               "smart_resize"],
})
