"""Ctrl-C and SIGHUP during training: Caffe's SignalHandler.

``with SignalHandler("stop", "snapshot") as handler:
solver.set_action_function(handler.requested_action)`` turns a signal into
a request the solver polls at each iteration boundary (and between test
batches), so the update in progress finishes and a consistent snapshot can
be written.  Effects: ``stop`` (dltrain: snapshot, then stop; a second
Ctrl-C interrupts at once, raising dlcore.errors.Interrupted, which no
layer wrapper mistakes for a layer's own failure), ``snapshot`` (snapshot
and go on), ``none`` (ignore the signal).
"""
import signal
import threading

from dlcore.errors import Interrupted

from .solver import SolverAction
from .training_log import info

__all__ = ["SignalHandler", "EFFECTS", "raise_interrupted"]

EFFECTS = (SolverAction.STOP, SolverAction.SNAPSHOT, SolverAction.NONE)


class SignalHandler:
    def __init__(self, sigint_effect=SolverAction.STOP, sighup_effect=SolverAction.SNAPSHOT, sigterm_effect=None):
        for effect in (sigint_effect, sighup_effect) + ((sigterm_effect,) if sigterm_effect else ()):
            if effect not in EFFECTS:
                raise ValueError(f"unknown signal effect {effect!r} (use one of {', '.join(EFFECTS)})")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        if sigterm_effect:            # MPI launchers turn Ctrl-C into SIGTERM for the ranks
            self.effects[signal.SIGTERM] = sigterm_effect
        self._pending = []
        self._previous = {}
        self._stop_requested = False

    def _handle(self, signum, frame):
        effect = self.effects.get(signum, SolverAction.NONE)
        name = signal.Signals(signum).name
        if effect == SolverAction.NONE:
            info(f"Caught {name}: ignored (its effect is 'none')")
            return
        if effect == SolverAction.STOP:
            if self._stop_requested and signum == signal.SIGINT:
                raise Interrupted
            self._stop_requested = True
            info(f"Caught {name}: finishing this iteration, writing a snapshot, then stopping "
                 "(press Ctrl-C again to quit at once)")
        else:
            info(f"Caught {name}: writing a snapshot after this iteration")
        self._pending.append(effect)

    def requested_action(self):
        """The oldest pending request (Caffe's GetRequestedAction), or 'none'."""
        if self._pending:
            return self._pending.pop(0)
        return SolverAction.NONE

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        return False


def raise_interrupted(signum, frame):
    """A SIGINT handler for commands without a SignalHandler: the user's Ctrl-C
    as an Interrupted (still a KeyboardInterrupt), never as a layer's failure."""
    raise Interrupted
