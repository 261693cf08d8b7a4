"""Qwen2.5-VL 3-D (temporal, height, width) M-RoPE position ids, as Hugging Face's ``get_rope_index``.

A pure function of the token ids and image grids, so every pipeline stage computes the same positions
without receiving them from the first stage. Text tokens advance all three axes together; the tokens
of an image (t, h, w patches, merged ``spatial_merge_size``^2 at a time) get t/h/w grid coordinates
offset by the text position before them, and the text after an image resumes max(h, w)/merge later.
"""

from __future__ import annotations

from typing import Optional

import torch


def get_rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    spatial_merge_size: int,
    image_token_id: int,
    vision_start_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (position_ids (3, b, s) long, mrope_position_deltas (b, 1)).

    ``input_ids`` (b, s); ``image_grid_thw`` (num_images, 3) in patches, images in batch order;
    ``attention_mask`` (b, s) 1 = token, 0 = padding (padding gets position 1, as HF did before v5).
    An image is a run of ``image_token_id`` right after ``vision_start_token_id``.
    """
    b, s = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    if image_grid_thw is None or len(image_grid_thw) == 0:
        # Text only: plain 1-D positions over the real tokens, repeated on the three axes.
        pos = attention_mask.long().cumsum(-1) - 1  # (b, s)
        pos = pos.masked_fill(attention_mask == 0, 1)
        position_ids = pos.unsqueeze(0).expand(3, -1, -1).contiguous()  # (3, b, s)
        deltas = pos.max(-1, keepdim=True)[0] + 1 - attention_mask.long().sum(-1, keepdim=True)  # (b, 1)
        return position_ids, deltas

    grids = image_grid_thw.tolist()
    position_ids = torch.ones(3, b, s, dtype=torch.long, device=device)
    deltas = []
    image_index = 0
    for i in range(b):
        ids = input_ids[i][attention_mask[i] == 1].tolist()
        # Starts of images: tokens right after a vision-start token that are image tokens.
        starts = [j + 1 for j, t in enumerate(ids[:-1]) if t == vision_start_token_id and ids[j + 1] == image_token_id]
        chunks: list[torch.Tensor] = []
        cursor, next_pos = 0, 0
        for start in starts:
            if image_index >= len(grids):
                raise ValueError(f"sample {i}: more images in input_ids than rows in image_grid_thw ({len(grids)})")
            t, h, w = grids[image_index]
            image_index += 1
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            n_text = start - cursor
            chunks.append(torch.arange(n_text, device=device).view(1, -1).expand(3, -1) + next_pos)
            next_pos += n_text
            t_idx = torch.arange(t, device=device).view(-1, 1).expand(-1, gh * gw).flatten()
            h_idx = torch.arange(gh, device=device).view(1, -1, 1).expand(t, -1, gw).flatten()
            w_idx = torch.arange(gw, device=device).view(1, 1, -1).expand(t, gh, -1).flatten()
            chunks.append(torch.stack([t_idx, h_idx, w_idx]) + next_pos)  # (3, t*gh*gw)
            next_pos += max(gh, gw)  # HF: text resumes after the larger spatial side
            cursor = start + t * gh * gw
        if cursor < len(ids):
            chunks.append(torch.arange(len(ids) - cursor, device=device).view(1, -1).expand(3, -1) + next_pos)
        positions = torch.cat(chunks, dim=1)  # (3, n_real)
        if positions.shape[1] != len(ids):
            raise ValueError(f"sample {i}: image grids cover {positions.shape[1]} positions for {len(ids)} tokens; "
                             "image_grid_thw does not match the <|image_pad|> runs")
        position_ids[:, i, attention_mask[i] == 1] = positions
        deltas.append(int(positions.max()) + 1 - len(ids))
    if image_index != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} rows but input_ids hold {image_index} images")
    return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)


def get_rope_index_packed(
    input_ids: torch.Tensor,
    image_grid_thw: Optional[torch.Tensor],
    cu_seqlens: torch.Tensor,
    spatial_merge_size: int,
    image_token_id: int,
    vision_start_token_id: int,
) -> torch.Tensor:
    """(3, 1, T) positions of a packed row (1, T): each sequence [cu[i], cu[i+1]) restarts as if alone,
    taking its images from ``image_grid_thw`` in order; tokens after cu[-1] (padding) get position 0."""
    ids = input_ids.reshape(-1)
    out = torch.zeros(3, 1, ids.shape[0], dtype=torch.long, device=ids.device)
    cu = [int(c) for c in cu_seqlens.tolist()]
    used = 0
    for a, b in zip(cu[:-1], cu[1:]):
        seg = ids[a:b]
        n_images = int(((seg[:-1] == vision_start_token_id) & (seg[1:] == image_token_id)).sum())
        grids = image_grid_thw[used:used + n_images] if n_images else None
        used += n_images
        pos, _ = get_rope_index(seg[None], grids, None, spatial_merge_size, image_token_id, vision_start_token_id)
        out[:, :, a:b] = pos
    n_grids = 0 if image_grid_thw is None else len(image_grid_thw)
    if used != n_grids:
        raise ValueError(f"packed row holds {used} images but image_grid_thw has {n_grids} rows")
    return out
