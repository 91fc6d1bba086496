package kubenode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// AgentImage is the name of the image BuildAgentImage makes: the agent
// (tests/kubenode/agent) at /agent. Its default command is `pause`, so it
// is the nodes' sandbox image too; pods run it with args ["serve"].
const AgentImage = "weft.test/agent:1"

// AgentPort is where `agent serve` listens in a pod.
const AgentPort = 8080

// BuildAgentImage builds the agent as a static binary and puts it in an
// image tarball under dir with deploy/image, no registry involved; it
// returns the tarball's path. It needs the go command and the checkout.
func BuildAgentImage(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "agent")
	out := filepath.Join(dir, "agent-image.tar")
	steps := [][]string{
		{"go", "build", "-trimpath", "-o", bin, "./tests/kubenode/agent"},
		{"go", "run", "./deploy/image", "-binary", bin, "-path", "/agent", "-cmd", "pause", "-tag", AgentImage, "-out", out},
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, s[0], s[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build the agent image: %v: %w\n%s", s, err, b)
		}
	}
	return out, nil
}
