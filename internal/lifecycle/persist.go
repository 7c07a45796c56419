package lifecycle

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/handoffd/handoffd/api"
)

// StateFile is the file in state_dir where handoffd records the
// generations that run, so that a restarted handoffd re-adopts them.
const StateFile = "state.json"

// savedState is what StateFile holds.
type savedState struct {
	Mode     api.Mode       `json:"mode"`
	Services []savedService `json:"services"`
}

type savedService struct {
	Name    string `json:"name"`
	LastID  int    `json:"last_id"`
	Current int    `json:"current"`
	Standby int    `json:"standby,omitempty"`
	// Generations are the live ones only.
	Generations []savedGeneration `json:"generations"`
	// FDStore names the files of the fd store, in their order: a
	// restarted handoffd finds each again in a live generation's fds.
	FDStore []savedFD `json:"fd_store,omitempty"`
}

// savedFD is one fd of the fd store, by its file's st_dev and st_ino.
type savedFD struct {
	Name string `json:"name"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

type savedGeneration struct {
	ID    int       `json:"id"`
	PID   int       `json:"pid"`
	State api.State `json:"state"`
	// StartTicks is the process's start time (/proc/PID/stat): with the
	// pid, it tells the same process from a later one with a reused pid.
	StartTicks uint64    `json:"start_ticks"`
	Started    time.Time `json:"started"`
	Ready      time.Time `json:"ready"`
	Active     time.Time `json:"active"`
	Draining   time.Time `json:"draining"`
	// Reloads: the process handles SIGHUP (see Process.Reloads).
	Reloads bool `json:"reloads,omitempty"`
	// Signalled: a draining generation got its stop signal.
	Signalled bool `json:"signalled,omitempty"`
}

func (st savedState) service(name string) (savedService, bool) {
	for _, s := range st.Services {
		if s.Name == name {
			return s, true
		}
	}
	return savedService{}, false
}

// saved returns what the service records of itself.
func (s *Service) saved() savedService {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := savedService{Name: s.cfg.Name, LastID: s.lastID, Generations: []savedGeneration{}}
	if s.current != nil {
		ss.Current = s.current.ID
	}
	if s.standby != nil {
		ss.Standby = s.standby.ID
	}
	for _, sf := range s.stored {
		ss.FDStore = append(ss.FDStore, savedFD{Name: sf.name, Dev: sf.dev, Ino: sf.ino})
	}
	// A generation being activated is recorded as what promoteLocked
	// makes of it, and of the generations it replaces.
	state := func(g *Generation) api.State { return g.state }
	if a := s.activating; a != nil {
		old, standby := s.current, s.standby
		ss.Current, ss.Standby = a.ID, 0
		keep := old != nil && s.cfg.Probation.Std() > 0 && old.state == api.StateActive
		if keep {
			ss.Standby = old.ID
		}
		state = func(g *Generation) api.State {
			switch {
			case g == a:
				return api.StateActive
			case g == old && keep:
				return api.StateStandby
			case g == old || g == standby:
				return api.StateDraining
			}
			return g.state
		}
	}
	for _, g := range s.gens {
		if g.state.Live() && g.pid != 0 {
			ss.Generations = append(ss.Generations, savedGeneration{ID: g.ID, PID: g.pid, State: state(g),
				StartTicks: g.startTicks, Started: g.started, Ready: g.ready, Active: g.active, Draining: g.draining,
				Reloads: g.reloads || g.proc != nil && g.proc.Reloads(), Signalled: g.signalled})
		}
	}
	return ss
}

// changed tells the state saver that something worth saving changed. It
// never blocks, so it may be called with s.mu held.
func (s *Service) changed() {
	if s.onChange != nil {
		s.onChange()
	}
}

// saveNow writes the state file at once, for a process that must not run
// before it is recorded there. Callers do not hold s.mu.
func (s *Service) saveNow() error {
	if s.save == nil {
		return nil
	}
	if err := s.save(); err != nil {
		return fmt.Errorf("record it in %s: %w", StateFile, err)
	}
	return nil
}

// persist writes the state file at once after steering moved (a canary
// started, promoted, a rollback), so that a handoffd killed from then on
// finds what serves; a write that fails is logged, and the state saver
// tries again at the next change. Callers do not hold s.mu.
func (s *Service) persist() {
	if err := s.saveNow(); err != nil {
		s.log.Error("save state", "err", err)
	}
}

// stateSaver writes StateFile after changes, coalescing bursts, from one
// goroutine that Supervisor owns.
type stateSaver struct {
	path    string
	collect func() savedState
	log     *slog.Logger
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	// writing is held for each write: by run, and by saveNow.
	writing sync.Mutex
}

func newStateSaver(dir string, collect func() savedState, log *slog.Logger) *stateSaver {
	return &stateSaver{path: filepath.Join(dir, StateFile), collect: collect, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (w *stateSaver) changed() {
	if w == nil {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *stateSaver) run() {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
			w.logged(w.write())
		case <-w.stop:
			w.logged(w.write())
			return
		}
	}
}

// close writes the state one last time and ends run. A nil saver (a
// Supervisor built without New, in tests) saves nothing.
func (w *stateSaver) close() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// saveNow writes the state at once, and says whether it could. Its
// callers hold no service's lock: collect takes each one.
func (w *stateSaver) saveNow() error {
	if w == nil {
		return nil
	}
	return w.write()
}

func (w *stateSaver) write() error {
	w.writing.Lock()
	defer w.writing.Unlock()
	data, err := json.MarshalIndent(w.collect(), "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(w.path, append(data, '\n'))
}

func (w *stateSaver) logged(err error) {
	if err != nil {
		w.log.Error("save state", "path", w.path, "err", err)
	}
}

// writeFileAtomic writes path, mode 0600, through a rename. Its directory,
// state_dir, is made by handoffd's start (host.PrepareStateDir).
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadState reads StateFile from dir; a missing file is an empty state.
func loadState(dir string) (savedState, error) {
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return savedState{}, nil
	}
	if err != nil {
		return savedState{}, fmt.Errorf("read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil {
		return savedState{}, fmt.Errorf("state %s: %w", filepath.Join(dir, StateFile), err)
	}
	return st, nil
}
