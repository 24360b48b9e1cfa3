package stage

import (
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// A stage that must not stop just anywhere (cr-parasite between injected
// calls, cr-tcp holding connections, cr-files holding a terminal's data)
// asks for SIGINT, SIGTERM and SIGHUP on a channel (NotifyInterrupt) and
// looks at it where stopping is safe. cr-dump, which runs its stages in
// its own process (RunIn), has no process to signal for a stage: it
// calls Interrupt, which the stages see as the signal.
var interrupts struct {
	sync.Mutex
	chans map[chan<- os.Signal]bool
	sent  os.Signal // Interrupt's, once called: a stage is asked to stop only once
}

// NotifyInterrupt relays SIGINT, SIGTERM, SIGHUP and Interrupt's signal to
// ch (buffered) until StopInterrupt; if Interrupt was called before, ch
// gets its signal at once.
func NotifyInterrupt(ch chan os.Signal) {
	signal.Notify(ch, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	interrupts.Lock()
	defer interrupts.Unlock()
	if interrupts.chans == nil {
		interrupts.chans = map[chan<- os.Signal]bool{}
	}
	interrupts.chans[ch] = true
	if interrupts.sent != nil {
		sendSignal(ch, interrupts.sent)
	}
}

// StopInterrupt undoes NotifyInterrupt.
func StopInterrupt(ch chan os.Signal) {
	signal.Stop(ch)
	interrupts.Lock()
	defer interrupts.Unlock()
	delete(interrupts.chans, ch)
}

// Interrupt asks every stage of this process to stop as sig would: the
// channels of NotifyInterrupt get it, now or when asked for, and
// InterruptSent says so from now on.
func Interrupt(sig os.Signal) {
	interrupts.Lock()
	defer interrupts.Unlock()
	interrupts.sent = sig
	for ch := range interrupts.chans {
		sendSignal(ch, sig)
	}
}

// ClearInterrupt forgets Interrupt's signal, for the next stages run
// here: who runs stages here runs one set at a time.
func ClearInterrupt() {
	interrupts.Lock()
	defer interrupts.Unlock()
	interrupts.sent = nil
}

// InterruptSent is Interrupt's signal, or nil if it was not called.
func InterruptSent() os.Signal {
	interrupts.Lock()
	defer interrupts.Unlock()
	return interrupts.sent
}

func sendSignal(ch chan<- os.Signal, sig os.Signal) {
	select {
	case ch <- sig:
	default: // one is waiting there already
	}
}
