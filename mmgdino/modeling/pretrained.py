"""The common base of mmgdino's model classes: a real `transformers.PreTrainedModel` over mmgdino's module tree.

Why a PreTrainedModel (it was not one before): transformers' own model tests, `Trainer` and PEFT reach into the
model through PreTrainedModel's machinery, not through a list of methods one could mirror: weights initialized
module by module through `_init_weights` (also on the meta device, then `to_empty`), `from_pretrained` building
the model on the meta device and materializing only what the checkpoint lacks, `enable_input_require_grads`,
`gradient_checkpointing_enable` over `GradientCheckpointingLayer`s, `_keep_in_fp32_modules` sets, dtype
strings, `get_memory_footprint`, `resize_token_embeddings`, the hub methods; and some of its helpers only
terminate on a PreTrainedModel (transformers' test of missing initializations walks up to one). So the classes
inherit all of it, and what transformers' rules need to know about our tree is stated here once:

- initialization: PreTrainedModel's generic rules, then `weights.initialize_module` (transformers' distributions
  for our fused modules, and every buffer we own); the Swin and BERT submodels bring their own `_init_weights`.
- tying: our shared heads are one module repeated (`nn.ModuleList([head] * layers)`), so tying has nothing to do;
  `_tied_weights_keys` is still transformers' (less the heads a config leaves untied) so that loading and saving
  know which checkpoint keys are aliases, and the saved files are the ones transformers writes.
- loading: `from_pretrained` takes transformers' arguments and reads the checkpoint straight into our tree (same
  state-dict keys), plus mmgdino's: `device=`, a hub id read from the local cache first, and `ModelLoadError`
  with one line for what cannot be read. Either family's class loads either family's checkpoints.
"""

import contextlib

from transformers import MMGroundingDinoConfig, PreTrainedModel
from transformers import initialization as init

from . import weights
from .hub import ModelLoadError, cache_first


class GroundingDinoPreTrainedModel(PreTrainedModel):
    config_class = MMGroundingDinoConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True

    def __init__(self, config):
        weights.check_family(config)
        if not config.two_stage:
            raise NotImplementedError("mmgdino implements the two-stage models (every released checkpoint is)")
        super().__init__(config)

    @property
    def family(self):
        return self.config.model_type

    def _init_weights(self, module):
        super()._init_weights(module)
        weights.initialize_module(module, self.config)

    def mark_tied_weights_as_initialized(self, loading_info):
        """transformers flags each tied alias as initialized, so that the initialization of missing weights skips
        it. Our aliases are the very tensors of their sources (one module), so the flag would also mark a source
        the checkpoint lacks as loaded, and it would stay on the meta device. Only the aliases of tensors loaded
        under another name leave the missing keys."""
        loading_info.missing_keys = {
            key
            for key in loading_info.missing_keys
            if key in self.all_tied_weights_keys
            or not getattr(self.get_parameter_or_buffer(key), "_is_hf_initialized", False)
        }

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *model_args, config=None, dtype=None,
                        torch_dtype=None, device=None, **kwargs):  # fmt: skip
        """transformers' from_pretrained (config=, state_dict=, output_loading_info=, revision=, dtype= or its
        old name torch_dtype=, ...), plus `device`. A hub id is read from the local cache when it is there. Errors
        are ModelLoadError with one line."""
        where = weights.checkpoint_location(pretrained_model_name_or_path)
        hub = {k: kwargs[k] for k in weights.HUB_ARGUMENTS if k in kwargs}
        if config is None or isinstance(config, (str, bytes)) or hasattr(config, "__fspath__"):
            config = weights.read_config(where if config is None else weights.checkpoint_location(config), **hub)
        weights.check_family(config)
        if dtype is None:
            dtype = torch_dtype

        def read(location, **more):
            return super(GroundingDinoPreTrainedModel, cls).from_pretrained(
                location, *model_args, config=config, **({} if dtype is None else {"dtype": dtype}), **more
            )

        try:
            loaded = read(None, **kwargs) if where is None else cache_first(read, where, **kwargs)
        except ModelLoadError:
            raise
        except Exception as exc:  # a folder with a config but no (or unreadable, or unfitting) weights
            raise ModelLoadError(f"{where}: no readable weights ({weights.first_line(exc)})") from exc
        model, info = loaded if kwargs.get("output_loading_info") else (loaded, None)
        if device is not None:
            model = model.to(device)
        return (model, info) if info is not None else model

    @classmethod
    def from_config(cls, config, dtype=None, torch_dtype=None, **kwargs):
        """An untrained model, initialized as transformers initializes it, in eval mode."""
        dtype = dtype if dtype is not None else torch_dtype
        return cls._from_config(config, **({} if dtype is None else {"dtype": dtype}), **kwargs).eval()

    @classmethod
    def from_transformers(cls, hf_model):
        """The same weights as a live transformers model (its tying already applied), on its device and dtype.
        A base-model class takes a detection model's base model."""
        if not cls.has_detection_heads:
            hf_model = getattr(hf_model, cls.base_model_prefix, hf_model)
        param = next(hf_model.parameters())
        with init.no_init_weights():  # every tensor is overwritten below; buffers are computed in __init__
            model = cls(hf_model.config)
        try:
            model.load_state_dict(hf_model.state_dict())
        except RuntimeError as exc:
            raise ModelLoadError(f"weights do not fit this architecture: {weights.first_line(exc)}") from exc
        model.name_or_path = getattr(hf_model, "name_or_path", "")
        return model.to(device=param.device, dtype=param.dtype).eval()

    def resolve_flags(self, output_attentions, output_hidden_states, return_dict, encoder_outputs):
        """forward's flags as transformers reads them (unset: the config's): (attentions, hidden states, dict)."""
        if encoder_outputs is not None:
            raise NotImplementedError("encoder_outputs: pass image_features= / prompt_features= instead")
        config = self.config
        return (
            output_attentions if output_attentions is not None else config.output_attentions,
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states,
            return_dict if return_dict is not None else config.return_dict,
        )

    has_detection_heads = False  # the detection classes hold the base model under `model` (base_model_prefix)

    @classmethod
    def can_generate(cls):
        return False

    def enable_input_require_grads(self):
        """transformers' hooks (every submodel's input embeddings output a tensor that requires grad), except that
        Swin's patch embeddings return (embeddings, size): there the embeddings are the ones marked. transformers'
        own class fails on that tuple."""

        def make_inputs_require_grads(module, inputs, output):
            (output[0] if isinstance(output, tuple) else output).requires_grad_(True)

        embeddings = {}
        for module in self.modules():
            if isinstance(module, PreTrainedModel):
                with contextlib.suppress(NotImplementedError):
                    found = module.get_input_embeddings()
                    if found is not None:
                        embeddings[id(found)] = found
        self._require_grads_hooks = [e.register_forward_hook(make_inputs_require_grads) for e in embeddings.values()]
        self._require_grads_hook = self._require_grads_hooks[0]

    def get_input_embeddings(self):
        return self.base_model.text_backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base_model.text_backbone.set_input_embeddings(value)

    def get_output_embeddings(self):
        return None

    @property
    def dtype(self):
        return self.base_model.level_embed.dtype

    @property
    def device(self):
        return self.base_model.level_embed.device
