"""Create, start, stop and destroy claws as recorded, resumable state machines.

Every operation is written to the operations log *before* its first side
effect and advanced after each step, and every step is idempotent. A CLI or
controller killed at any point therefore leaves a record that ``reconcile``
can pick up: it runs the remaining steps forward, or, if a step keeps failing,
rolls a half-made claw back so nothing is left dangling. Data disks are never
overwritten or deleted except by an explicit destroy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from appliance.controller.context import Context, Progress, silent
from appliance.controller.domains import ACTIVE, find_domain, rename_legacy_domain
from appliance.controller.guestfiles import (
    ClawFiles,
    build_domain_spec,
    domain_uuid,
    provision_seed,
)
from appliance.core.errors import ClawdenError, Conflict, InvalidInput
from appliance.core.model import Claw, ClawSpec, ClawState, domain_name
from appliance.image import GoldenImage, latest_image, verify_image
from appliance.schedule.jobs import ensure_heartbeat
from appliance.store import Operation
from appliance.store.operations import pid_alive
from provisioning.disks import create_data_disk, create_root_overlay

CREATE_STEPS = ("record", "provision", "disks", "define", "boot")
DESTROY_STEPS = ("record", "halt", "undefine", "files", "keys", "forget")
START_STEPS = ("record", "prepare", "boot")
STOP_STEPS = ("record", "halt")

SHUTDOWN_TIMEOUT = 30.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Lifecycle:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._verified: GoldenImage | None = None

    # ---- entry points -------------------------------------------------
    def create(self, spec: ClawSpec, progress: Progress = silent) -> Claw:
        ctx = self.ctx
        ctx.hypervisor.ping()
        image = self.verified_image(progress)
        if ctx.claws.get(spec.name) is not None:
            raise Conflict(
                f"a claw named {spec.name!r} already exists",
                "choose another name, or see `clawden claw list`",
            )
        self._refuse_if_busy(spec.name)
        params = {
            "member": spec.member,
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "image_version": image.version,
        }
        op = ctx.ops.start("create", spec.name, params, first_step=CREATE_STEPS[0])
        self.run(op, progress)
        return ctx.claws.require(spec.name)

    def destroy(self, name: str, progress: Progress = silent) -> None:
        ctx = self.ctx
        ctx.claws.require(name)
        ctx.hypervisor.ping()
        self._refuse_if_busy(name)
        op = ctx.ops.start("destroy", name, {}, first_step=DESTROY_STEPS[0])
        self.run(op, progress)

    def start(self, name: str, progress: Progress = silent) -> None:
        self._start_simple("start", START_STEPS, name, progress)

    def stop(self, name: str, progress: Progress = silent) -> None:
        self._start_simple("stop", STOP_STEPS, name, progress)

    def _start_simple(
        self, kind: str, steps: tuple[str, ...], name: str, progress: Progress
    ) -> None:
        ctx = self.ctx
        claw = ctx.claws.require(name)
        if claw.state not in (ClawState.STOPPED, ClawState.RUNNING):
            raise Conflict(
                f"claw {name!r} is {claw.state.value}: it cannot {kind} now",
                "run `clawden reconcile` to finish or clean up its last operation",
            )
        ctx.hypervisor.ping()
        self._refuse_if_busy(name)
        self.run(ctx.ops.start(kind, name, {}, first_step=steps[0]), progress)

    def verified_image(self, progress: Progress = silent) -> GoldenImage:
        """The newest golden image, its sha256 checked against the manifest.

        Checked once per Lifecycle (one CLI command, one reconcile pass):
        hashing ~400 MiB costs over a second under load, and the steps of one
        operation all use the image that was just verified.
        """
        image = latest_image(self.ctx.settings.images_dir)
        if image is None:
            raise ClawdenError(
                "no golden image has been built yet", "run `clawden image build` first"
            )
        if self._verified == image:
            return image
        progress(f"verifying golden image {image.version}")
        try:
            verify_image(image)
        except ClawdenError as exc:
            self.ctx.audit.append(
                self.ctx.actor, "image.refused", image.version, {"reason": exc.what}
            )
            raise
        self._verified = image
        return image

    # ---- the state machine runner -----------------------------------
    def run(self, op: Operation, progress: Progress = silent) -> None:
        """Run ``op`` from its recorded step to the end (used for new and resumed ops)."""
        steps, table = self._plan(op.kind)
        index = steps.index(op.step)
        current = op
        try:
            for step in steps[index:]:
                if current.step != step:
                    current = self.ctx.ops.advance(current.id, step)
                progress(f"{op.kind} {op.claw}: {step}")
                update = table[step](current, progress)
                if update:
                    current = self.ctx.ops.advance(current.id, step, update)
        except BaseException as exc:
            self._on_failure(current, exc, progress)
            raise
        # One unit: killed in between, the operation would be done with no
        # audit entry, and nothing would ever write it.
        with self.ctx.store.transaction():
            self.ctx.ops.finish(op.id, "done")
            self.ctx.audit.append(
                self.ctx.actor, f"claw.{op.kind}", op.claw, self._summary(current)
            )

    def _on_failure(self, op: Operation, exc: BaseException, progress: Progress) -> None:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return  # left recorded as running: reconcile resumes it
        error = exc.what if isinstance(exc, ClawdenError) else f"{type(exc).__name__}: {exc}"
        if op.kind == "destroy":
            # A destroy must finish: keep it open so reconcile completes it.
            self.ctx.ops.note_error(op.id, error)
            return
        if op.kind in ("start", "stop"):
            # The desired state is already recorded on the claw; reconcile's
            # drift pass retries it. The operation itself is over.
            self.ctx.ops.finish(op.id, "failed", error)
            return
        progress(f"create {op.claw} failed at {op.step} ({error}); rolling back")
        try:
            self._rollback_create(op.claw)
        except Exception as cleanup:  # noqa: BLE001 — report, keep the record for reconcile
            self.ctx.ops.note_error(op.id, f"{error}; rollback failed: {cleanup}")
            return
        self.ctx.ops.finish(op.id, "rolled_back", error)
        self.ctx.audit.append(
            self.ctx.actor, "claw.create.rolled_back", op.claw, {"step": op.step, "error": error}
        )

    def _plan(
        self, kind: str
    ) -> tuple[tuple[str, ...], dict[str, Callable[[Operation, Progress], dict[str, Any] | None]]]:
        if kind == "create":
            return CREATE_STEPS, {
                "record": self._create_record,
                "provision": self._create_provision,
                "disks": self._create_disks,
                "define": self._define,
                "boot": self._boot,
            }
        if kind == "destroy":
            return DESTROY_STEPS, {
                "record": lambda op, p: self._set_state(op, ClawState.DESTROYING),
                "halt": self._force_off,
                "undefine": self._undefine,
                "files": self._remove_files,
                "keys": lambda op, p: self._delete_keys(op.claw),
                "forget": lambda op, p: self._forget(op.claw),
            }
        if kind == "start":
            return START_STEPS, {
                "record": lambda op, p: self._set_state(op, ClawState.RUNNING),
                "prepare": self._prepare_start,
                "boot": self._boot,
            }
        if kind == "stop":
            return STOP_STEPS, {
                "record": lambda op, p: self._set_state(op, ClawState.STOPPED),
                "halt": self._shutdown,
            }
        raise InvalidInput(f"unknown operation kind {kind!r}", "this is a bug; report it")

    # ---- steps ---------------------------------------------------------
    def _create_record(self, op: Operation, progress: Progress) -> None:
        if self.ctx.claws.get(op.claw) is None:
            p = op.params
            self.ctx.claws.add(
                Claw(
                    name=op.claw,
                    member=str(p["member"]),
                    state=ClawState.CREATING,
                    image_version=str(p["image_version"]),
                    vcpus=int(p["vcpus"]),
                    memory_mib=int(p["memory_mib"]),
                    created_at=_now(),
                )
            )
        # Every claw has a heartbeat (every 30 min, on) from the start; it
        # costs nothing while HEARTBEAT.md holds no task. Idempotent on resume.
        ensure_heartbeat(self.ctx.store, op.claw)

    def _create_provision(self, op: Operation, progress: Progress) -> None:
        files = self._files(op.claw)
        files.dir.mkdir(parents=True, exist_ok=True)
        files.dir.chmod(0o711)
        progress("minting keys and writing the seed disk")
        provision_seed(self.ctx, op.claw, str(op.params["member"]), files)

    def _create_disks(self, op: Operation, progress: Progress) -> None:
        files = self._files(op.claw)
        image = self.verified_image()
        create_root_overlay(image.golden, files.root)
        if not files.data.exists():
            progress("creating the data disk")
            create_data_disk(files.data)

    def _prepare_start(self, op: Operation, progress: Progress) -> None:
        # A fresh root overlay on every boot: nothing a compromised guest wrote
        # to its root disk survives a restart. Only the data disk persists.
        files = self._files(op.claw)
        image = self.verified_image(progress)
        if find_domain(self.ctx, op.claw).state in ACTIVE:
            return  # already up: never swap the root disk under a running guest
        create_root_overlay(image.golden, files.root)
        self.ctx.claws.set_image_version(op.claw, image.version)
        self._define(op, progress)

    def _define(self, op: Operation, progress: Progress) -> None:
        claw = self.ctx.claws.require(op.claw)
        image = self.verified_image()
        choice = self.ctx.pick_accelerator()
        progress(f"accelerator: {choice.accelerator.value} ({choice.note})")
        spec = build_domain_spec(self.ctx.settings, claw, image, choice.accelerator)
        # A pre-tag domain holding the claw's UUID takes its tagged name
        # first: libvirt refuses one UUID under two names.
        self._domain(op.claw, progress)
        self.ctx.hypervisor.define(spec)

    def _boot(self, op: Operation, progress: Progress) -> None:
        progress("booting")
        self.ctx.hypervisor.start(self._domain(op.claw, progress))
        self.ctx.claws.set_state(op.claw, ClawState.RUNNING)

    def _shutdown(self, op: Operation, progress: Progress) -> None:
        name = self._ours(op.claw)
        if name is None:
            return
        progress(f"shutting down (forced after {SHUTDOWN_TIMEOUT:.0f} s)")
        self.ctx.hypervisor.shutdown(name, timeout=SHUTDOWN_TIMEOUT)
        if name != self._tagged(op.claw):
            # A claw from before installation tags, now stopped: libvirt can
            # rename it at last. The stop itself has succeeded either way; a
            # rename that fails is retried (and reported) by reconcile.
            try:
                rename_legacy_domain(self.ctx, op.claw)
            except ClawdenError as exc:
                progress(f"could not rename domain {name} yet ({exc.what}); reconcile retries")

    def _force_off(self, op: Operation, progress: Progress) -> None:
        name = self._ours(op.claw)
        if name is not None:
            self.ctx.hypervisor.force_off(name)

    def _undefine(self, op: Operation, progress: Progress) -> None:
        name = self._ours(op.claw)
        if name is not None:
            self.ctx.hypervisor.undefine(name)

    def _ours(self, claw: str) -> str | None:
        """The name of this installation's domain of ``claw`` (tagged, or
        from before tags), or ``None``. Checked by UUID: another installation
        on the same libvirt may have a domain of that name (a claw of the same
        name from an older clawden, or a tag collision); it must never be
        stopped or undefined from here."""
        domain = find_domain(self.ctx, claw)
        if domain.state is None:
            return None
        if domain.legacy:
            return domain.name  # find_domain checked its UUID
        found = self.ctx.hypervisor.uuid(domain.name)
        return domain.name if found == domain_uuid(self.ctx.settings, claw) else None

    def _tagged(self, claw: str) -> str:
        return domain_name(self.ctx.settings.installation_tag, claw)

    def _domain(self, claw: str, progress: Progress) -> str:
        """The name of the claw's domain, after giving a pre-tag domain that
        is not running its tagged name (it keeps its UUID, definition and
        disks). A running one keeps its old name: libvirt cannot rename it."""
        domain = find_domain(self.ctx, claw)
        if not domain.legacy or domain.state in ACTIVE:
            return domain.name
        progress(f"renaming domain {domain.name} to {self._tagged(claw)}")
        rename_legacy_domain(self.ctx, claw)
        return self._tagged(claw)

    def _remove_files(self, op: Operation, progress: Progress) -> None:
        shutil.rmtree(self._files(op.claw).dir, ignore_errors=True)

    def _delete_keys(self, claw: str) -> None:
        self.ctx.keys.delete_for(claw)

    def _forget(self, claw: str) -> None:
        # Its jobs, conversations, approval requests, policy and grants, skills and owner link
        # go with it (a new claw of the same name starts clean, asking for everything); its
        # LLM spending stays on record (llm_calls).
        self.ctx.store.schedules.delete_claw(claw)
        self.ctx.store.messages.delete_claw(claw)
        self.ctx.store.approvals.delete_claw(claw)
        self.ctx.store.policy.delete_claw(claw)
        self.ctx.store.grants.delete_claw(claw)
        self.ctx.store.skills.delete_claw(claw)
        self.ctx.store.users.delete_claw(claw)
        self.ctx.claws.delete(claw)

    def _set_state(self, op: Operation, state: ClawState) -> None:
        self.ctx.claws.set_state(op.claw, state)

    def _rollback_create(self, claw: str) -> None:
        """Undo a failed create completely: no domain, disk, key, socket or row left."""
        name = self._ours(claw)
        if name is not None:
            self.ctx.hypervisor.force_off(name)
            self.ctx.hypervisor.undefine(name)
        shutil.rmtree(self._files(claw).dir, ignore_errors=True)
        self._delete_keys(claw)
        if self.ctx.claws.get(claw) is not None:
            self._forget(claw)

    # ---- helpers ---------------------------------------------------------
    def _files(self, claw: str) -> ClawFiles:
        return ClawFiles.for_claw(self.ctx.settings, claw)

    def _refuse_if_busy(self, claw: str) -> None:
        busy = self.ctx.ops.running_for(claw)
        if busy is None:
            return
        owner = busy.owner_pid
        alive = owner is not None and owner != os.getpid() and pid_alive(owner)
        fix = (
            f"wait for process {owner} to finish it"
            if alive
            else "run `clawden reconcile` to finish or roll it back"
        )
        raise Conflict(f"claw {claw!r} has an unfinished {busy.kind} operation (#{busy.id})", fix)

    @staticmethod
    def _summary(op: Operation) -> dict[str, Any]:
        keep = ("member", "vcpus", "memory_mib", "image_version")
        return {k: op.params[k] for k in keep if k in op.params}
