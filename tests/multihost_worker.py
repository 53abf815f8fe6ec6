"""One process of the two-process data-parallel check (run by test_parallel_multihost.py).

Usage: python multihost_worker.py PORT PROCESS_ID.  Each process has 2 simulated CPU
devices; together they form a 4-device mesh.  Prints ``RESULT <json>`` on success.
"""

import json
import sys

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main() -> None:
    """Checks the sharded step against the one-device step, then trains a few steps."""
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    import jax.numpy as jnp
    import numpy as np
    import optax

    from da_framework.config import ExperimentConfig
    from da_framework.models import make_model
    from da_framework.train import init_train_state, make_mesh, make_train_step, parse_method, replicate, shard_batch
    from da_framework.train.loop import train

    tx = optax.GradientTransformation(  # stores the gradients as its state
        lambda p: jax.tree.map(jnp.zeros_like, p), lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g)
    )
    model, method = make_model("lenet", 10, 16, channels=(4, 8), dense=32), parse_method("cross_entropy + 1.0*mmd + 1.0*dann")
    rng = np.random.default_rng(0)  # the same global batch in both processes
    xs, xt = rng.random((16, 16, 16, 1), dtype=np.float32), 0.5 * rng.random((16, 16, 16, 1), dtype=np.float32) + 0.3
    ys = rng.integers(0, 10, 16).astype(np.int32)
    local = jax.local_devices()[0]
    put = lambda x: jax.device_put(x, local)  # noqa: E731
    state = jax.jit(lambda k: init_train_state(k, model, method, tx, put(xs), put(xt), put(ys)))(put(jax.random.key(0)))
    step = jax.jit(make_train_step(model, method, tx, 10))
    key = jax.random.key(3)
    one_state, one_m = step(state, {"image": put(xs), "label": put(ys)}, {"image": put(xt)}, put(key))
    mesh = make_mesh(4)
    half = slice(8 * pid, 8 * pid + 8)  # this process's slice of the global batch
    sb, tb = shard_batch({"image": xs[half], "label": ys[half]}, mesh), shard_batch({"image": xt[half]}, mesh)
    assert sb["image"].shape == (16, 16, 16, 1), sb["image"].shape
    many_state, many_m = step(replicate(state, mesh), sb, tb, replicate(key, mesh))
    loss_err = abs(float(many_m["loss"]) - float(one_m["loss"]))
    # excess over an allclose(rtol=1e-4) band, max over gradient leaves (<= ~1e-6 when equal)
    grad_err = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)) - 1e-4 * np.abs(np.asarray(a))))
        for a, b in zip(jax.tree.leaves(one_state.opt_state), jax.tree.leaves(many_state.opt_state))
    )
    tiny = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16)
    run = train(ExperimentConfig(method="dan", steps=4, log_every=2, batch_size=16, num_devices=4, **tiny))
    out = {
        "process": pid,
        "devices": jax.device_count(),
        "loss_err": loss_err,
        "grad_rel_err": grad_err,
        "train_losses": [h["loss"] for h in run.history if "loss" in h],
        "target_acc": run.metrics["target_test_accuracy"],
        "compile_count": run.compile_count,
    }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
