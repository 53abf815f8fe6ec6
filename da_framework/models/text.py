"""Text backbones over int32 token ids (0 = padding): a 1-D convolutional net and a BiLSTM.

Both start with an ``nn.Embed`` named ``embedding``, so inside a :class:`Classifier` the
embedding table lives at ``backbone/embedding/embedding`` in either model and can be
transferred from one to the other (``transfer_params(..., include=r"^backbone/embedding/")``).

* :class:`TextCNN`: embedding (zero at padding) -> parallel 1-D convolutions (one per kernel size, ReLU) ->
  max over the non-padding positions -> concatenation (Kim, "Convolutional Neural Networks
  for Sentence Classification", EMNLP 2014).
* :class:`BiLSTM`: embedding -> bidirectional LSTM (``nn.Bidirectional`` of two
  ``nn.RNN(nn.LSTMCell)``, sequence lengths from the padding) -> mean over the
  non-padding positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD_ID = 0


def _valid_mask(tokens: jax.Array) -> jax.Array:
    return (tokens != PAD_ID)[..., None]


class TextCNN(nn.Module):
    """Embedding + 1-D convolutions + masked max-pooling.

    Attributes:
      vocab_size: number of token ids.
      embed_dim: embedding width.
      filters: output channels of each convolution.
      kernel_sizes: one convolution per width; the feature width is ``filters * len(kernel_sizes)``.
      dropout: dropout on the pooled features (training only).
    """

    vocab_size: int = 20_000
    embed_dim: int = 64
    filters: int = 64
    kernel_sizes: Sequence[int] = (3, 5)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """Maps token ids (batch, length) to features (batch, filters * len(kernel_sizes))."""
        tokens = tokens.astype(jnp.int32)
        mask = _valid_mask(tokens)
        x = jnp.where(mask, nn.Embed(self.vocab_size, self.embed_dim, name="embedding")(tokens), 0.0)
        pooled = []
        for k in self.kernel_sizes:
            h = nn.relu(nn.Conv(self.filters, (k,), padding="SAME", name=f"conv{k}")(x))
            pooled.append(jnp.max(jnp.where(mask, h, 0.0), axis=1))  # ReLU >= 0: padding never wins
        f = jnp.concatenate(pooled, axis=-1)
        if self.dropout:
            f = nn.Dropout(self.dropout, deterministic=not train)(f)
        return f


class BiLSTM(nn.Module):
    """Embedding + bidirectional LSTM + masked mean-pooling.

    Attributes:
      vocab_size: number of token ids.
      embed_dim: embedding width.
      hidden: LSTM width per direction; the feature width is ``2 * hidden``.
      dropout: dropout on the pooled features (training only).
    """

    vocab_size: int = 20_000
    embed_dim: int = 64
    hidden: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """Maps token ids (batch, length) to features (batch, 2 * hidden)."""
        tokens = tokens.astype(jnp.int32)
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embedding")(tokens)
        mask = _valid_mask(tokens)
        lengths = jnp.sum(mask[..., 0], axis=-1)
        rnn = nn.Bidirectional(nn.RNN(nn.LSTMCell(self.hidden)), nn.RNN(nn.LSTMCell(self.hidden)), name="bilstm")
        h = rnn(x, seq_lengths=lengths)
        f = jnp.sum(jnp.where(mask, h, 0.0), axis=1) / jnp.maximum(lengths, 1)[:, None]
        if self.dropout:
            f = nn.Dropout(self.dropout, deterministic=not train)(f)
        return f
