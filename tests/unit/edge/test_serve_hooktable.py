"""`serve.HookTable`: the cached hook dispatch calls the same handlers, in the same order, as mitmproxy's own."""

from __future__ import annotations

import asyncio

from mitmproxy import exceptions, hooks, options

from edgerules.edge.serve import EdgeMaster


class Recorder:
    def __init__(self, name: str, calls: list[str], *, halt: bool = False, fail: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.halt = halt
        self.fail = fail

    async def running(self) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError("boom")
        if self.halt:
            raise exceptions.AddonHalt


class Parent:
    """An addon with a child addon: both handle the event, the parent first."""

    def __init__(self, calls: list[str]) -> None:
        self.name = "parent"
        self.calls = calls
        self.addons = [Recorder("child", calls)]

    def running(self) -> None:
        self.calls.append("parent")


def test_handlers_run_in_chain_order_children_included_and_after_later_adds():
    async def scenario() -> list[str]:
        calls: list[str] = []
        master = EdgeMaster(options.Options())
        master.addons.add(Recorder("a", calls), Parent(calls))
        await master.addons.trigger_event(hooks.RunningHook())
        master.addons.add(Recorder("late", calls))  # the table must not keep the old chain
        await master.addons.trigger_event(hooks.RunningHook())
        master.addons.remove(master.addons.get("a"))
        await master.addons.trigger_event(hooks.RunningHook())
        return calls

    calls = asyncio.run(scenario())
    assert calls == ["a", "parent", "child", "a", "parent", "child", "late", "parent", "child", "late"]


def test_an_error_is_contained_to_its_addon_and_addonhalt_ends_the_chain():
    async def scenario() -> list[str]:
        calls: list[str] = []
        master = EdgeMaster(options.Options())
        master.addons.add(Recorder("fails", calls, fail=True), Recorder("next", calls))
        await master.addons.trigger_event(hooks.RunningHook())
        master.addons.add(Recorder("halts", calls, halt=True), Recorder("never", calls))
        await master.addons.trigger_event(hooks.RunningHook())
        return calls

    calls = asyncio.run(scenario())
    assert calls == ["fails", "next", "fails", "next", "halts"]


def test_startup_objects_are_frozen_out_of_the_collectors_view():
    import gc

    from edgerules.gctuning import freeze_startup_objects

    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > before + 1000  # this process's modules and objects, at least
    finally:
        gc.unfreeze()
