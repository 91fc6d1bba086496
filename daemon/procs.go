package daemon

import (
	"log/slog"
	"os"
	"runtime"
)

// userspaceProcs is how many threads at once run the daemon's Go code
// (GOMAXPROCS) while it carries the data path in userspace wireguard-go on
// a machine of numCPU CPUs: half of them, at least one.
//
// wireguard-go passes every batch of packets from goroutine to goroutine
// (TUN reader, encryption workers, sender; receiver, decryption workers,
// TUN writer). With as many Ps as CPUs, each hand-off wakes another thread
// and idle Ps spin looking for work: profiles under iperf3 on two CPUs put
// the scheduler (futex wake-ups, finding work, sysmon) at about a tenth of
// the daemon's time with a P per CPU and at 6 % with one P, and the
// daemons' CPU per byte about 13 % lower (BENCHMARKS.md). Fewer Ps lose
// little parallelism: the other half of the data path's work, the TUN and
// UDP system calls and the pods' TCP, runs in the kernel, on threads that
// hold no P while in a system call.
func userspaceProcs(numCPU int) int {
	return max(1, numCPU/2)
}

// tuneProcs sets GOMAXPROCS to userspaceProcs when the tunnel is userspace,
// unless the operator set GOMAXPROCS, and logs what it did.
func tuneProcs(log *slog.Logger, userspace bool) {
	if !userspace {
		return
	}
	if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
		log.Info("GOMAXPROCS set by the environment; keeping it", "gomaxprocs", v)
		return
	}
	n := userspaceProcs(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(n)
	log.Info("userspace data path: fewer threads run Go code at once", "gomaxprocs", n, "cpus", runtime.NumCPU())
}
