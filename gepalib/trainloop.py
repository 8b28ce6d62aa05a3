"""The trainer's run around its steps (see docs/training.md): evaluation, checkpoints, the loop.

:class:`RunLoop` is the part of :class:`gepalib.train.Trainer` that uses what the steps made:
:meth:`~RunLoop.evaluate` scores the live and EMA weights (non-overlapping windows),
:meth:`~RunLoop.save` writes a checkpoint, :meth:`~RunLoop.run` trains to the end with
validation, logging and checkpoints at their cadence, stops cleanly after a signal, and writes
the final weights, the float stage rows and the summary. It works on the attributes the
Trainer builds (config, plan, model, EMA, optimizers, loader, run directory, log).
"""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

from gepalib import checkpoint as ckpt
from gepalib import dist
from gepalib.eval.windows import eval_nonoverlapping
from gepalib.faults import NonFiniteLoss, TrainInterrupted
from gepalib.fsio import atomic_torch_save
from gepalib.optim import set_lr
from gepalib.trainlog import append_metrics, matrix_rms


class RunLoop:
    """Evaluation, checkpoints and the whole run of a :class:`gepalib.train.Trainer`."""

    def evaluate(self, ema: bool | None = None) -> dict[str, Any]:
        """Live and EMA weights on the validation tokens (non-overlapping windows), logged.
        ``ema``: score the EMA weights too (default: the ``val_ema`` field; the final
        evaluation always does). Without it the result's ``ema`` is None."""
        t0, s, tc = time.perf_counter(), self.steps_done, self.cfg.train
        bs, T = self.cfg.eval.eval_batch_seqs, self.plan.eval_seq_len
        live = eval_nonoverlapping(self.eval_live, self.val_tokens, self.luts, T, bs, autocast=tc.autocast)
        emar = None
        if s == 0 and self.resumed_from is None:
            emar = live  # the EMA equals the initial weights exactly
        elif self.cfg.eval.val_ema if ema is None else ema:
            self.eval_model.load_state_dict(self.ema.export())
            emar = eval_nonoverlapping(self.eval_ema, self.val_tokens, self.luts, T, bs, autocast=tc.autocast)
        row = {"val_loss": live.val_loss, "val_bpb": live.val_bpb, "weight_rms": matrix_rms(self.model)}
        if emar is not None:
            row.update(val_loss_ema=emar.val_loss, val_bpb_ema=emar.val_bpb)
        row["eval_s"] = time.perf_counter() - t0
        ema_part = "" if emar is None else f"val_loss_ema:{emar.val_loss:.4f} val_bpb_ema:{emar.val_bpb:.4f} "
        self.log.line(f"step:{s}/{tc.steps} val_loss:{live.val_loss:.4f} val_bpb:{live.val_bpb:.4f} "
                      f"{ema_part}weight_rms:{row['weight_rms']:.5f} eval_s:{row['eval_s']:.1f}")
        if not all(math.isfinite(row[k]) for k in ("val_loss", "val_bpb", "val_loss_ema", "val_bpb_ema") if k in row):
            msg = (f"non-finite validation loss at step {s}/{tc.steps} (live {live.val_loss}, "
                   f"EMA {emar.val_loss if emar is not None else 'not scored'}); "
                   f"nothing recorded. Last good checkpoint: {ckpt.latest_checkpoint(self.rd.checkpoints) or 'none'}")
            self.log.line(f"step:{s}/{tc.steps} error:non_finite_val_loss")
            self._record_failed(msg)
            raise NonFiniteLoss(msg)
        return {"step": s, "row": row, "live": live, "ema": emar}

    def save(self) -> Path | None:
        """A checkpoint of the current step (rank 0 writes; every rank waits). Returns its path."""
        if self.failed:
            raise RuntimeError(f"run {self.rd.path} failed ({self.failed}); its weights are not saved")
        path = None
        if self.main:
            state = {"fingerprint": self.fingerprint, "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                     "ema": self.ema.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                     "loader": self.loader.state_dict(), "rng": ckpt.capture_rng(), "train_time": self.elapsed}
            path = ckpt.save_checkpoint(self.rd.checkpoints, self.steps_done, state, keep=self.cfg.train.keep_checkpoints)
            self.log.line(f"step:{self.steps_done}/{self.cfg.train.steps} checkpoint:{path}", echo=False)
        dist.barrier()
        return path

    # -- the whole run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``steps`` (or the wall-clock cap) with evaluation, logging and checkpoints
        at their cadence; then the final weights, stages and summary. Closes the log."""
        if self.complete is not None:
            return self.complete
        tc, rd = self.cfg.train, self.rd
        try:
            last_eval = None
            if self.steps_done == 0:
                last_eval = self.evaluate()
                if self.main:
                    append_metrics(rd, {"step": 0, "tokens": 0, "lr": set_lr(self.optimizers, 0, tc),
                                        **last_eval["row"]})
            t_log, n_log = 0.0, 0
            with self.stop:
                while self.steps_done < tc.steps:
                    r = self.step()
                    step = self.steps_done
                    t_log += r.seconds
                    n_log += 1
                    self.log.tick()
                    time_up = tc.max_wallclock > 0 and self.train_time >= tc.max_wallclock
                    final = step == tc.steps or time_up
                    do_val = final or (tc.val_every > 0 and step % tc.val_every == 0)
                    if do_val or step == 1 or (tc.log_every > 0 and step % tc.log_every == 0):
                        ms = 1000.0 * t_log / n_log
                        tok_s = tc.batch_tokens / (ms / 1000.0)
                        self.log.step(f"step:{step}/{tc.steps} train_loss:{r.loss:.4f} lr_mult:{r.lr_mult:.4f} "
                                      f"step_ms:{ms:.1f} tok_s:{tok_s:.0f} train_time:{self.train_time:.1f}s",
                                      postfix=f"loss {r.loss:.4f}")
                        row = {"step": step, "tokens": step * tc.batch_tokens, "lr": r.lr_mult, "train_loss": r.loss,
                               "ms_per_step": ms, "tok_per_s": tok_s, "train_time_s": self.train_time}
                        if do_val:
                            last_eval = self.evaluate(ema=True if final else None)
                            row.update(last_eval["row"])
                        if self.main:
                            append_metrics(rd, row)
                        t_log, n_log = 0.0, 0
                    path = None
                    if final or (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0) or r.stop_requested:
                        path = self.save()
                    if r.stop_requested and not final:
                        self._interrupted(path)
                    if time_up:
                        self.log.line(f"step:{step}/{tc.steps} wallclock_cap:{tc.max_wallclock}s reached")
                        break
            return self._finish(last_eval)
        except OSError as e:  # a full or read-only disk: recorded when summary.json can still be written
            self._record_failed(f"{e} (after step {self.steps_done}/{tc.steps})")
            raise
        finally:
            self.close()

    def _interrupted(self, path: Path | None) -> None:
        step, total = self.steps_done, self.cfg.train.steps
        signum = self.stop.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        msg = (f"stopped by signal {name} after step {step}/{total}; checkpoint {path or self.rd.checkpoints} "
               f"written; rerun the same command to resume")
        self.log.line(f"step:{step}/{total} interrupted:{name}")
        self.log.line(msg)
        if self.main:
            self.rd.update_summary(train={"status": "interrupted", "step": step, "fingerprint": self.fingerprint})
        raise TrainInterrupted(msg, signum, step)

    def _finish(self, last_eval: dict[str, Any] | None) -> dict[str, Any]:
        """Final evaluation (unless the last step was just evaluated), weights, stages, summary."""
        step, tc, rd = self.steps_done, self.cfg.train, self.rd
        if last_eval is None or last_eval["step"] != step or last_eval["ema"] is None:
            last_eval = self.evaluate(ema=True)
        live, ema = last_eval["live"], last_eval["ema"]
        result = {"status": "complete", "steps": step, "tokens": step * tc.batch_tokens,
                  "train_seconds": self.elapsed, "params": self.n_params, "world_size": self.info.world_size,
                  "accum": self.plan.accum, "fingerprint": self.fingerprint, "device": str(self.dev),
                  "final_val_bpb": live.val_bpb, "final_val_bpb_ema": ema.val_bpb}
        if self.main:
            atomic_torch_save(self.ema.export(), rd.ema_weights, checksum=True)
            atomic_torch_save({k: v.cpu() for k, v in self.model.state_dict().items()}, rd.live_weights, checksum=True)
            # one write: the float rows and the train result appear together or not at all
            summary = rd.record_stages({"float_live": {**live.as_row(), "source": "train"},
                                        "float_ema": {**ema.as_row(), "source": "train"}}, train=result)
            self.log.line(f"final steps:{step} train_time:{self.elapsed:.1f}s float_live_bpb:{live.val_bpb:.6f} "
                          f"float_ema_bpb:{ema.val_bpb:.6f}")
        else:
            summary = {"train": result, "stages": {"float_live": live.as_row(), "float_ema": ema.as_row()}}
        dist.barrier()
        return summary
