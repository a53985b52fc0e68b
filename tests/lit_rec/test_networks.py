"""SeqEncoder (SASRec) and heads: shapes, PAD handling, left-padding invariance, causality, gradients, sizes."""

from __future__ import annotations

import pytest
import torch

from lit_rec.networks import (
    ActorCritic,
    ActorHead,
    CausalBlock,
    CriticHead,
    EncoderConfig,
    QHead,
    QNetwork,
    SeqEncoder,
    count_parameters,
)

NUM_ITEMS, L, D = 40, 6, 16


def _q_network(dim: int = D, num_items: int = NUM_ITEMS) -> QNetwork:
    torch.manual_seed(0)
    return QNetwork(SeqEncoder(num_items, dim=dim, history_len=L, num_layers=2), QHead(dim))


def _actor_critic(dim: int = D) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(SeqEncoder(NUM_ITEMS, dim=dim, history_len=L), ActorHead(dim), CriticHead(dim))


HISTORY = torch.tensor([[0, 0, 0, 3, 4, 5], [0] * L, [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
CANDIDATES = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 40]])


def test_shapes_and_finite_on_all_pad_histories() -> None:
    q_net, ac = _q_network().eval(), _actor_critic().eval()
    q, state = q_net(HISTORY, CANDIDATES)
    assert q.shape == (4, 3) and state.shape == (4, D)
    logits, value = ac(HISTORY, CANDIDATES)
    assert logits.shape == (4, 3) and value.shape == (4,)
    all_pad = torch.zeros(3, L, dtype=torch.long)
    for out in (q_net.score(all_pad, CANDIDATES[:3]), q_net.score_all(all_pad), ac(all_pad, CANDIDATES[:3])[1], ac.score_all(all_pad)):
        assert torch.isfinite(out).all()
    assert q_net.score_all(HISTORY).shape == (4, NUM_ITEMS + 1)
    # in training mode (dropout on) too
    assert torch.isfinite(q_net.train()(all_pad, CANDIDATES[:3])[0]).all()


def test_score_all_matches_score_on_the_same_items() -> None:
    for net in (_q_network().eval(), _actor_critic().eval()):
        assert torch.allclose(net.score_all(HISTORY).gather(1, CANDIDATES), net.score(HISTORY, CANDIDATES), atol=1e-5)
    # more candidates than items: the same numbers
    net = _q_network().eval()
    many = torch.randint(1, NUM_ITEMS + 1, (4, 60))
    assert torch.allclose(net.score(HISTORY, many), net.score_all(HISTORY).gather(1, many), atol=1e-5)


def test_sequence_scores_every_prefix_and_its_last_position_is_the_state() -> None:
    q_net, ac = _q_network().eval(), _actor_critic().eval()
    scores, states = q_net.sequence_scores(HISTORY)
    assert scores.shape == (4, L, NUM_ITEMS + 1) and states.shape == (4, L, D)
    assert torch.allclose(states[:, -1], q_net.encoder(HISTORY), atol=1e-6)
    assert torch.allclose(scores[:, -1], q_net.score_all(HISTORY), atol=1e-5)
    logits, values, ac_states = ac.sequence_scores(HISTORY)
    assert logits.shape == (4, L, NUM_ITEMS + 1) and values.shape == (4, L) and ac_states.shape == (4, L, D)
    assert torch.allclose(logits[:, -1], ac.score_all(HISTORY), atol=1e-5)
    assert torch.allclose(values[:, -1], ac(HISTORY, CANDIDATES)[1], atol=1e-6)


def test_sequence_is_causal_a_later_item_never_changes_an_earlier_state() -> None:
    encoder = _q_network().encoder.eval()
    history = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    changed = history.clone()
    changed[:, 4] = torch.tensor([30, 31])
    before, after = encoder.sequence(history), encoder.sequence(changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4], after[:, 4], atol=1e-3)
    assert not torch.allclose(before[:, 5], after[:, 5], atol=1e-3)


def test_sequence_states_are_left_padding_invariant() -> None:
    encoder = _q_network().encoder.eval()
    items = torch.tensor([[3, 4, 5], [9, 1, 2]])
    padded = torch.cat([torch.zeros(2, L - 3, dtype=torch.long), items], dim=1)
    # the states after the real items do not depend on how much padding precedes them
    assert torch.allclose(encoder.sequence(padded)[:, -3:], encoder.sequence(items), atol=1e-5)
    assert torch.allclose(encoder.sequence(padded[:, 1:])[:, -3:], encoder.sequence(items), atol=1e-5)


def test_every_empty_prefix_is_the_state_of_a_user_with_no_history() -> None:
    """Training the prefix before a user's first item trains what a cold user is scored with."""
    encoder = _q_network().encoder.eval()
    padded = torch.cat([torch.zeros(1, L - 3, dtype=torch.long), torch.tensor([[3, 4, 5]])], dim=1)
    cold = encoder(torch.zeros(1, L, dtype=torch.long))
    states = encoder.sequence(padded)
    assert torch.allclose(states[0, : L - 3], cold.expand(L - 3, -1), atol=1e-6)
    assert not torch.allclose(states[0, -1], cold[0], atol=1e-3)


def test_q_head_starts_as_the_dot_product() -> None:
    net = _q_network().eval()
    state = net.encoder(HISTORY)
    vectors = net.encoder.item_vectors(CANDIDATES)
    assert torch.allclose(net.score(HISTORY, CANDIDATES), torch.einsum("bd,bcd->bc", state, vectors), atol=1e-6)
    # tied embeddings: an item's vector is its input embedding
    assert torch.equal(net.encoder.all_item_vectors(), net.encoder.item_embedding.weight)


def test_state_depends_only_on_non_pad_items() -> None:
    encoder = _q_network().encoder.eval()
    items = torch.tensor([[3, 4, 5], [9, 1, 2]])
    padded = torch.cat([torch.zeros(2, L - 3, dtype=torch.long), items], dim=1)
    assert torch.allclose(encoder(items), encoder(padded), atol=1e-5)
    assert torch.allclose(encoder(items[:, -1:]), encoder(padded[:, -1:]), atol=1e-5)
    # every fully-PAD history, whatever its length, is the same "empty" state
    assert torch.allclose(encoder(torch.zeros(1, 2, dtype=torch.long)), encoder(torch.zeros(1, L, dtype=torch.long)), atol=1e-6)
    # and a real item changes it
    assert not torch.allclose(encoder(items), encoder(torch.tensor([[3, 4, 6], [9, 1, 3]])))


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    block = CausalBlock(dim=16, num_heads=2, dropout=0.0).eval()
    x = torch.randn(2, L, 16)
    allowed = torch.ones(L, L, dtype=torch.bool).tril().expand(2, 1, L, L)
    changed = x.clone()
    changed[:, 3:] += torch.randn(2, L - 3, 16)
    before, after = block(x, allowed), block(changed, allowed)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_gradients_reach_every_parameter() -> None:
    for net, outputs in (
        (_q_network(), lambda n: n(HISTORY, CANDIDATES)),
        (_actor_critic(), lambda n: n(HISTORY, CANDIDATES)),
    ):
        first, second = outputs(net.train())
        (first.square().mean() + second.square().mean()).backward()
        no_grad = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert no_grad == [], no_grad


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_item_embeddings_start_at_item_init_std_and_pad_is_zero(std: float) -> None:
    torch.manual_seed(0)
    encoder = SeqEncoder(2000, dim=64, item_init_std=std)
    weight = encoder.item_embedding.weight
    assert torch.equal(weight[0], torch.zeros(64))
    assert weight[1:].std().item() == pytest.approx(std, rel=0.05)


def test_student_is_at_most_half_of_teacher() -> None:
    # ML-100K-sized catalogue: the student differs only in dim (its state, the hint, is narrower too)
    teacher, student = _q_network(dim=64, num_items=1682), _q_network(dim=32, num_items=1682)
    ratio = count_parameters(student) / count_parameters(teacher)
    assert ratio <= 0.497, ratio


def test_boundary_shapes_are_checked() -> None:
    net = _q_network()
    with pytest.raises(AssertionError, match=r"history must be \(B, L\)"):
        net.encoder(torch.tensor([1, 2, 3]))
    with pytest.raises(AssertionError, match="must be in 1..history_len"):
        net.encoder(torch.ones(2, L + 1, dtype=torch.long))
    with pytest.raises(AssertionError, match="integer item ids"):
        net.encoder(torch.ones(2, L))
    with pytest.raises(AssertionError, match="candidates has 3 rows but history has 4"):
        net(HISTORY, CANDIDATES[:3])


def test_torchscript_matches_eager() -> None:
    for net in (_q_network().eval(), _actor_critic().eval()):
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted.score(HISTORY, CANDIDATES), net.score(HISTORY, CANDIDATES), atol=1e-6)
        assert torch.allclose(scripted.score_all(HISTORY[:, 2:]), net.score_all(HISTORY[:, 2:]), atol=1e-6)


def test_encoder_config_builds_the_shape_it_names_and_refuses_a_bad_one() -> None:
    config = EncoderConfig(dim=16, num_layers=1, num_heads=4, dropout=0.0)
    encoder = config.build(num_items=30, history_len=7)
    assert (encoder.dim, encoder.history_len, len(encoder.blocks)) == (16, 7, 1)
    # a checkpoint written through the CLI holds the fields as a mapping
    assert EncoderConfig.of({"dim": 16, "num_layers": 1, "num_heads": 4, "dropout": 0.0}) == config
    assert EncoderConfig.of(config) is config
    with pytest.raises(ValueError, match="divisible by num_heads"):
        EncoderConfig(dim=10, num_heads=3)
