"""Small random-weight transformers models (MM Grounding DINO with 4 or 5 levels, Grounding DINO) and padded
batched inputs with real phrase structure, shared by the model and patch tests."""

import torch

VOCAB = 1100  # room for BERT's [CLS]=101, [SEP]=102 and "."=1012, so prompts have phrases


def small_backbone_and_text():
    from transformers import BertConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, out_indices=[2, 3, 4], image_size=64
    )
    text = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB
    )
    return backbone, text


def randomize_zero_init(model, seed=0):
    """transformers zero-initializes box heads' last layers and deformable attention's offset and weight
    projections; an untrained model would then hide errors in those paths. Give them small random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model


def _common(levels, **overrides):
    settings = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=12,
        num_feature_levels=levels,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        max_text_len=16,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    settings.update(overrides)
    return settings


def mm_grounding_dino(levels=4, seed=0, backbone_overrides=None, **overrides):
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    torch.manual_seed(seed)
    backbone, text = small_backbone_and_text()
    if levels == 5:
        backbone.out_indices = [1, 2, 3, 4]
    for key, value in (backbone_overrides or {}).items():
        setattr(backbone, key, value)
    config = MMGroundingDinoConfig(backbone_config=backbone, text_config=text, **_common(levels, **overrides))
    model = MMGroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():  # distinct biases per layer where heads are untied, as in real checkpoints
        for i, head in enumerate(model.class_embed):
            head.bias.fill_(-4.0 + 0.3 * i)
        model.model.encoder_output_class_embed.bias.fill_(-3.5)
    return randomize_zero_init(model, seed)


def grounding_dino(seed=0, **overrides):
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    backbone, text = small_backbone_and_text()
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, **_common(4, **overrides))
    return randomize_zero_init(GroundingDinoForObjectDetection(config).eval(), seed)


def prompt_ids(phrases):
    """[CLS] w w . w . [SEP] from phrase word counts, e.g. (2, 1): word ids are arbitrary non-special ids."""
    ids = [101]
    for n, words in enumerate(phrases):
        ids += [200 + 7 * n + k for k in range(words)] + [1012]
    return ids + [102]


def grounding_inputs(batch=2, height=64, width=80, seed=1):
    """A padded batch: the second image is narrower (pixel_mask) and its prompt shorter (attention_mask)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [prompt_ids((2, 1, 3)), prompt_ids((1, 2))][:batch] + [prompt_ids((1,))] * max(0, batch - 2)
    length = max(map(len, prompts))
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    pixel_values = torch.randn(batch, 3, height, width, generator=gen)
    pixel_mask = torch.ones(batch, height, width, dtype=torch.long)
    if batch > 1:
        pixel_mask[1, :, width - 20 :] = 0
        pixel_values[1, :, :, width - 20 :] = 0
    return dict(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids, attention_mask=attention_mask)


def offline_processor(directory):
    """A Grounding DINO processor with a made-up BERT vocabulary written to `directory` (no downloads): the
    special ids sit where BERT has them, and words are "w200", "w201", ... with their own ids."""
    from pathlib import Path

    from transformers import BertTokenizer, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    vocab = [f"[unused{i}]" for i in range(VOCAB)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103], vocab[1012] = (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ".",
    )
    for i in range(200, 1000):
        vocab[i] = f"w{i}"
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(path), do_lower_case=True)
    return GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 160}),
        tokenizer=tokenizer,
    )
