package cli

import (
	"encoding/json"
	"fmt"
	"io"
)

// printStatus renders a status answer for people. Until each section has its
// own table, it prints the JSON indented.
func printStatus(w io.Writer, _ string, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
