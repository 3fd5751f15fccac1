//! The seven task states and the table of legal transitions between them.
//!
//! The table is the AgentMesh protocol v0.1.0 lifecycle. One addition, made by the
//! daemon and never by an agent: [`TaskState::can_abort_to_failed`] lets the daemon end
//! any unfinished task as `failed` when the responder vanishes or cannot be reached,
//! which the reference has no transition for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Received, not started.
    Submitted,
    /// Being worked on.
    Working,
    /// The responder needs more input from the requester.
    InputRequired,
    /// The responder needs authorization from the requester.
    AuthRequired,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Canceled by either party (terminal).
    Canceled,
}

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task transition {from} -> {to}")]
pub struct TransitionError {
    /// State the task was in.
    pub from: TaskState,
    /// State that was asked for.
    pub to: TaskState,
}

impl TaskState {
    /// All states, in lifecycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Submitted,
        TaskState::Working,
        TaskState::InputRequired,
        TaskState::AuthRequired,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Canceled,
    ];

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Canceled
        )
    }

    /// Whether the protocol allows `self -> to`.
    pub fn can_transition(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Submitted, Working)
                | (Submitted, Canceled)
                | (Working, Completed)
                | (Working, Failed)
                | (Working, InputRequired)
                | (Working, AuthRequired)
                | (Working, Canceled)
                | (InputRequired, Working)
                | (InputRequired, Canceled)
                | (AuthRequired, Working)
                | (AuthRequired, Canceled)
        )
    }

    /// Checks `self -> to` against the table.
    pub fn transition(self, to: TaskState) -> Result<TaskState, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// Whether the daemon may end a task in this state as `failed` on its own
    /// (responder gone, path lost): any state that is not terminal.
    pub fn can_abort_to_failed(self) -> bool {
        !self.is_terminal()
    }

    /// The protocol's string for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Submitted => "submitted",
            TaskState::Working => "working",
            TaskState::InputRequired => "input_required",
            TaskState::AuthRequired => "auth_required",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the seven states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state '{0}'")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;
    use super::*;

    #[test]
    fn the_reference_table_exactly() {
        let legal = [
            (Submitted, Working),
            (Working, Completed),
            (Working, Failed),
            (Working, InputRequired),
            (Working, AuthRequired),
            (InputRequired, Working),
            (AuthRequired, Working),
            (Submitted, Canceled),
            (Working, Canceled),
            (InputRequired, Canceled),
            (AuthRequired, Canceled),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                assert_eq!(
                    from.can_transition(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for from in [Completed, Failed, Canceled] {
            assert!(from.is_terminal());
            assert!(!from.can_abort_to_failed());
            for to in TaskState::ALL {
                assert_eq!(from.transition(to), Err(TransitionError { from, to }));
            }
        }
    }

    #[test]
    fn strings_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            let bin = crate::frame::to_bytes(&st).unwrap();
            assert_eq!(crate::frame::from_bytes::<TaskState>(&bin).unwrap(), st);
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}
