package cli

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
)

func newRotateKeyCmd() *cobra.Command {
	var (
		runDir  string
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Rotate this node's WireGuard key without losing packets",
		Long: `Make a new WireGuard key for this node and switch to it once every live peer
has it: the daemon keeps the next key in its state directory (a restart carries
on with it), announces it by gossip (and on its Node with Kubernetes), switches
when every live peer has acked it, tells each peer at once, and forgets the old
key. Pod traffic goes on throughout. Running it during a rotation changes
nothing. 'weft status peers' shows the rotation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c := client(runDir)
			var out api.RotateKeyResponse
			if err := c.Do(ctx, http.MethodPost, api.PathRotateKey, nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rotating to the key %s\n", out.NextPublicKey)
			if !wait {
				return nil
			}
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			var waiting []string
			for {
				var st daemon.PeersStatus
				if err := c.Do(ctx, http.MethodGet, api.PathStatus+"/peers", nil, &st); err != nil {
					return err
				}
				if st.PublicKey == out.NextPublicKey {
					_, err := fmt.Fprintln(cmd.OutOrStdout(), "switched: every live peer uses the new key; the old key is forgotten")
					return err
				}
				waiting = st.KeyRotation.Waiting
				select {
				case <-ctx.Done():
					return fmt.Errorf("the rotation is still pending after %v (waiting for %v); it goes on in the daemon, see weft status peers", timeout, waiting)
				case <-t.C:
				}
			}
		},
	}
	addRunDir(cmd, &runDir)
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the node has switched to the new key")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait")
	return cmd
}
