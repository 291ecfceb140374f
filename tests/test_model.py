"""The SteerMoE model on tiny random configs: gradients, padding invariance, ablation equivalences, pooling."""
import pytest
import torch

from steermoe.declare.model_config import SteerMoEConfig
from steermoe.errors import ConfigError
from steermoe.model.modeling import IGNORE_INDEX
from steermoe.model.steering import pool
from tests.tiny import features, tiny_model

METHODS = ["layer_wise", "linear", "post_encoder", "lora", "llm_lora"]
TARGETS = ["hello there", "a much longer target sentence here"]


@pytest.mark.parametrize("encoder", ["whisper", "parakeet", "fireredasr"])
@pytest.mark.parametrize("method", METHODS)
def test_only_trainable_parameters_change(method, encoder):
    model = tiny_model(method, encoder, pooling_kernel_size=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    groups = model.parameter_groups()
    assert {id(p) for ps in groups.values() for p in ps} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    feats, lengths = features(encoder, [37, 52])
    model(feats, lengths, TARGETS).loss.backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, f"frozen {name} received a gradient"
    optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), f"frozen {name} changed"
    expected = {"layer_wise": {"steering_vectors", "layer_scales", "router", "projection"},
                "post_encoder": {"steering_vectors", "layer_scales", "router", "projection"},
                "linear": {"projection"}, "lora": {"projection", "lora"},
                "llm_lora": {"projection", "llm_lora"}}[method]
    assert {g for g, ps in groups.items() if ps} == expected


@pytest.mark.parametrize("encoder", ["whisper", "parakeet"])
@pytest.mark.parametrize("method", METHODS)
def test_every_tensor_the_model_builds_follows_its_inputs_device(method, encoder):
    """On a GPU a tensor made without device= lands on the CPU and the step fails there. Here the default device is
    "meta" while model and inputs are on the CPU: such a tensor is on meta and the step fails the same way."""
    model = tiny_model(method, encoder, pooling_kernel_size=2).train()
    feats, lengths = features(encoder, [37, 52])
    torch.set_default_device("meta")
    try:
        loss = model(feats, lengths, TARGETS, ["say: ", "spell: "], return_gates=True).loss
        loss.backward()
        # greedy: transformers' beam search makes tensors on the default device and then moves them, which meta
        # cannot tell from a mistake
        hypotheses = model.eval().generate(feats, lengths, ["say: ", "spell: "], max_new_tokens=3)
    finally:
        torch.set_default_device(None)
    assert loss.device.type == "cpu" and torch.isfinite(loss) and len(hypotheses) == 2


@pytest.mark.parametrize("encoder,decoder,prompt_format,method", [
    ("whisper", "qwen2", "raw", "layer_wise"),
    ("whisper", "llama", "chat", "post_encoder"),
    ("parakeet", "qwen2", "chat", "layer_wise"),
    ("parakeet", "llama", "raw", "lora"),
    ("fireredasr", "qwen2", "chat", "layer_wise"),
    ("fireredasr", "llama", "raw", "lora"),
])
def test_padding_invariance(encoder, decoder, prompt_format, method):
    """An utterance in a padded batch gives the same logits and the same generated text as alone."""
    model = tiny_model(method, encoder, decoder, pooling_kernel_size=3, prompt_format=prompt_format)
    # encoder lengths 25 (Whisper), 7 (Parakeet), 13 (FireRedASR): a pooling window straddles the end
    short_frames, long_frames = 49, 97
    batch_feats, batch_lengths = features(encoder, [short_frames, long_frames], seed=1)
    alone_feats, alone_lengths = features(encoder, [short_frames], seed=1)  # same random draw for utterance 0
    if encoder == "whisper":
        alone_feats = batch_feats[:1, :, :short_frames]
    else:
        alone_feats = batch_feats[:1, :short_frames]
    with torch.no_grad():
        batch_out = model(batch_feats, batch_lengths, TARGETS)
        alone_out = model(alone_feats, alone_lengths, TARGETS[:1])
    n = alone_out.logits.shape[1]
    assert batch_out.logits.shape[1] > n  # the short utterance really was padded
    torch.testing.assert_close(batch_out.logits[0, -n:], alone_out.logits[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(batch_out.loss, model(batch_feats, batch_lengths, TARGETS).loss)
    batch_text = model.generate(batch_feats, batch_lengths, max_new_tokens=8)
    alone_text = model.generate(alone_feats, alone_lengths, max_new_tokens=8)
    assert batch_text[0] == alone_text[0]


def test_labels_cover_target_and_eos_only():
    model = tiny_model("linear")
    feats, lengths = features("whisper", [30, 60])
    audio, audio_lengths = model.encode(feats, lengths)
    embeds, mask, positions, labels, width = model.pack(audio, audio_lengths, None, ["ab", "xyz"])
    eos = model.tokenizer.eos_token_id
    for b, target in enumerate(["ab", "xyz"]):
        ids = model.tokenizer(target, add_special_tokens=False).input_ids + [eos]
        assert labels[b][labels[b] != IGNORE_INDEX].tolist() == ids
        assert labels[b, -len(ids):].tolist() == ids  # target and EOS close the sequence
    assert width == max(len(model.tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in ["ab", "xyz"])
    assert mask[0].sum() < mask[1].sum() and mask[0, 0] == 0  # left padding is masked
    assert positions[0, mask[0].argmax()] == 0 and positions[1, 0] == 0


@pytest.mark.parametrize("encoder", ["whisper", "parakeet", "fireredasr"])
def test_layer_wise_with_zero_scales_equals_linear(encoder):
    steered = tiny_model("layer_wise", encoder, seed=3, pooling_kernel_size=2)
    linear = tiny_model("linear", encoder, seed=3, pooling_kernel_size=2)
    linear.load_state_dict(steered.state_dict(), strict=False)  # same frozen weights and projection
    feats, lengths = features(encoder, [33, 50])
    with torch.no_grad():
        differs = steered(feats, lengths, TARGETS).logits
        steered.steering.layer_scales.zero_()
        same = steered(feats, lengths, TARGETS).logits
        reference = linear(feats, lengths, TARGETS).logits
    torch.testing.assert_close(same, reference, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(differs, reference, atol=1e-6)  # the scales were doing something


def test_pooling_by_hand_and_odd_lengths():
    x = torch.arange(1.0, 8.0).view(1, 7, 1).repeat(2, 1, 1)  # frames 1..7
    lengths = torch.tensor([7, 5])
    avg, avg_lengths = pool(x, lengths, 4, "avg")
    assert avg_lengths.tolist() == [2, 2]
    assert avg[0, :, 0].tolist() == [2.5, 6.0]  # (1+2+3+4)/4, (5+6+7)/3
    assert avg[1, :, 0].tolist() == [2.5, 5.0]  # the second window holds only frame 5
    mx, _ = pool(x, lengths, 4, "max")
    assert mx[0, :, 0].tolist() == [4.0, 7.0] and mx[1, :, 0].tolist() == [4.0, 5.0]
    assert pool(x, lengths, 1, "avg")[0] is x


@pytest.mark.parametrize("frames,kernel,expected", [(37, 2, [10]), (37, 3, [7]), (41, 4, [6]), (1, 4, [1])])
def test_encoder_output_lengths(frames, kernel, expected):
    model = tiny_model("layer_wise", pooling_kernel_size=kernel)
    feats, lengths = features("whisper", [frames])
    audio, audio_lengths = model.encode(feats, lengths)
    assert audio_lengths.tolist() == expected == [audio.shape[1]]  # ceil(ceil(F / 2) / k)


def test_pooling_position_mid_stack_and_max_prompt_tokens():
    model = tiny_model("layer_wise", pooling_kernel_size=2, pooling_position=1, max_prompt_tokens=5)
    feats, lengths = features("whisper", [40, 13])
    audio, audio_lengths = model.encode(feats, lengths)
    assert audio.shape[1] == 5 and audio_lengths.tolist() == [5, 4]  # 40 -> 20 -> 10 -> 5; 13 -> 7 -> 4


def test_30s_window_attends_the_whole_window():
    model = tiny_model("linear", encoder_window="30s", pooling_kernel_size=4)
    feats, lengths = features("whisper", [40, 3000])
    audio, audio_lengths = model.encode(feats, lengths)
    assert audio_lengths.tolist() == [375, 375]  # 1500 encoder frames / 4, for every utterance


def test_generate_beam_search():
    model = tiny_model("layer_wise")
    feats, lengths = features("whisper", [30, 45])
    texts = model.generate(feats, lengths, max_new_tokens=4, num_beams=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_decoding_ignores_the_decoders_own_generation_config_and_applies_its_repetition_penalty():
    from transformers import GenerationConfig

    feats, lengths = features("whisper", [37, 52])
    plain = tiny_model("linear").generate(feats, lengths, max_new_tokens=30)
    assert plain[0] == "/ / / / / / / /"  # this random model repeats itself: a repetition penalty would show
    # what Qwen2.5-Instruct's folder says, made stronger so that it would show
    sampling = tiny_model("linear", decoder_generation=GenerationConfig(
        do_sample=True, temperature=5.0, top_k=50, top_p=0.9, repetition_penalty=3.0, no_repeat_ngram_size=1))
    for seed in (1, 2):
        torch.manual_seed(seed)
        assert sampling.generate(feats, lengths, max_new_tokens=30) == plain
    penalised = sampling.generate(feats, lengths, max_new_tokens=30, repetition_penalty=1.5)
    assert penalised[0].startswith("/ / / ") and penalised[0] != plain[0]


def test_frozen_parts_stay_in_eval_mode():
    model = tiny_model("layer_wise", "parakeet").train()
    assert model.training and not model.encoder.training and not model.decoder.training


@pytest.mark.parametrize("options,message", [
    ({"method": "steer"}, "method"),
    ({"pooling_type": "median"}, "pooling_type"),
    ({"num_experts": 0}, "num_experts"),
    ({"pooling_kernel_size": "4"}, "pooling_kernel_size"),
    ({"encoder_window": "10s"}, "encoder_window"),
    ({"steering_scale": "0.1"}, "steering_scale"),
])
def test_config_rejects_bad_values(options, message):
    with pytest.raises(ConfigError, match=message):
        SteerMoEConfig(**options)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="num_expert"):
        SteerMoEConfig.from_dict({"num_expert": 8})


def test_model_rejects_inconsistent_options():
    with pytest.raises(ConfigError, match="pooling_position"):
        tiny_model("layer_wise", pooling_position=9)
    with pytest.raises(ConfigError, match="use_adapter"):
        tiny_model("linear", use_adapter=False)
    with pytest.raises(ValueError, match="30s"):
        tiny_model("linear", "parakeet", encoder_window="30s")
    with pytest.raises(ConfigError, match="projector: mlp .* use_adapter: false"):
        SteerMoEConfig(method="linear", projector="mlp", use_adapter=False)


def test_lora_targets_attention_and_feed_forward():
    model = tiny_model("lora", lora_r=4)
    names = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    for target in ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]:
        assert any(f".{target}.lora_A" in n for n in names), target


@pytest.mark.parametrize("decoder_kind", ["qwen2", "llama"])
def test_llm_lora_adapts_the_llms_query_and_value_in_fp32_and_starts_as_the_plain_llm(decoder_kind):
    """LoRA's B starts at zero: before training, llm_lora's loss is linear's with the same projection; the adapters
    stay fp32 in a bf16 LLM, and only they and the projection train."""
    model = tiny_model("llm_lora", decoder_kind=decoder_kind, lora_r=4)
    names = [n for n, p in model.decoder.named_parameters() if p.requires_grad]
    layers = model.decoder.config.num_hidden_layers
    assert len(names) == 2 * 2 * layers and all(".q_proj.lora_" in n or ".v_proj.lora_" in n for n in names)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    linear = tiny_model("linear", decoder_kind=decoder_kind)
    linear.prompt_proj.load_state_dict(model.prompt_proj.state_dict())
    feats, lengths = features("whisper", [40, 64])
    with torch.no_grad():
        torch.testing.assert_close(model(feats, lengths, TARGETS).loss, linear(feats, lengths, TARGETS).loss)
    half = tiny_model("llm_lora", decoder_kind=decoder_kind, lora_r=4, decoder_dtype=torch.bfloat16)
    assert {p.dtype for p in half.decoder.parameters() if p.requires_grad} == {torch.float32}
    assert torch.isfinite(half.train()(feats, lengths, TARGETS).loss)


def test_mlp_projector_is_two_layers_with_a_relu_and_trains():
    model = tiny_model("layer_wise", projector="mlp", projector_hidden=24)
    first, relu, second = model.prompt_proj
    assert isinstance(relu, torch.nn.ReLU) and first.out_features == second.in_features == 24
    seen = {}
    model.prompt_proj.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out))
    feats, lengths = features("whisper", [40, 64])
    model.train()(feats, lengths, TARGETS).loss.backward()
    torch.testing.assert_close(seen["out"], second(torch.relu(first(seen["x"]))))
    assert seen["out"].shape[-1] == model.decoder.config.hidden_size
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt_proj.parameters())


def test_target_only_logits_give_the_decoders_own_loss():
    """The loss computed from target positions only equals the LLM's own loss over the full sequence."""
    model = tiny_model("layer_wise", pooling_kernel_size=2)
    feats, lengths = features("whisper", [40, 64])
    with torch.no_grad():
        out = model(feats, lengths, TARGETS)
        audio, audio_lengths = model.encode(feats, lengths)
        embeds, mask, positions, labels, _ = model.pack(audio, audio_lengths, None, TARGETS)
        full = model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels)
    torch.testing.assert_close(out.loss, full.loss, atol=1e-6, rtol=1e-6)
    width = out.logits.shape[1]
    torch.testing.assert_close(out.logits, full.logits[:, -width - 1:-1], atol=1e-6, rtol=1e-6)


def saved_activation_bytes(model, feats, lengths, targets) -> tuple[int, dict]:
    """Bytes autograd keeps for backward during one forward (checkpointed layers keep only their inputs), and the
    trainable parameters' gradients after backward."""
    kept = [0]

    def pack(tensor):
        kept[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(feats, lengths, targets).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return kept[0], grads


def test_gradient_checkpointing_covers_the_llm_keeps_gradients_and_saves_memory():
    from tests.tiny import features, tiny_model

    model = tiny_model("layer_wise").train()
    feats, lengths = features("whisper", [300, 220])
    targets = ["one two three four", "five six"]
    plain_bytes, plain = saved_activation_bytes(model, feats, lengths, targets)
    model.set_gradient_checkpointing(True)
    assert all(layer.training for layer in model.decoder.model.layers)  # what transformers checks to checkpoint
    assert not any(m.training for layer in model.decoder.model.layers for m in layer.modules() if m is not layer)
    checkpointed_bytes, checkpointed = saved_activation_bytes(model, feats, lengths, targets)
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
    assert checkpointed_bytes < 0.5 * plain_bytes
    model.set_gradient_checkpointing(False)
    assert saved_activation_bytes(model, feats, lengths, targets)[0] == plain_bytes
