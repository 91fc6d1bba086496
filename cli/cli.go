// Package cli is the weft command line: the daemon, the status and
// maintenance commands, and the demo. main.go hands it the arguments.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/weftnet/weft/version"
)

// Main runs the command line with args (without the program name) and
// returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "weft:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

type exitCoder interface{ ExitCode() int }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "weft",
		Short: "weft: an encrypted Kubernetes pod network",
		Long: `weft is a Kubernetes pod network. Nodes find each other by gossip, form a full
mesh of WireGuard tunnels, split the pod address range with a CRDT allocator
and enforce NetworkPolicy. The same binary, started as weft-cni, is the CNI
plugin.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newDaemonCmd(),
		newStatusCmd(),
		newRmpeerCmd(),
		newRotateKeyCmd(),
		newWhyCmd(),
		newInstallCNICmd(),
		newResetCmd(),
		newDemoCmd(),
		newNetlabCleanCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String())
			return err
		},
	}
}

// envName is the WEFT_* variable of a flag: upper case, '-' becomes '_'.
func envName(flag string) string {
	return "WEFT_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag of fs that was not given on the command line from
// its WEFT_* variable, and names the variable in the flag's help.
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		v, ok := lookup(envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
		}
	})
	return errors.Join(errs...)
}

// annotateEnv appends the environment variable to every flag's usage.
func annotateEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage += " [$" + envName(f.Name) + "]"
	})
}
