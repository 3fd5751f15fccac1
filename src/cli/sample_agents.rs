//! Small agents that answer the demo's and the tests' requests over the real local API:
//! `echo` (answers at once), `count` (streams), `book` (asks for input first).

use std::path::Path;

use serde_json::{json, Value};

use super::client::{Client, ClientError};

/// Text of a JSON value for people: strings without quotes, null as nothing.
pub fn human(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Registers an agent named `name` with these capabilities and skills on the daemon at
/// `sock`, and serves its requests in a background task: `echo` answers at once,
/// `count` streams `1..=n`, `book` asks for input first.
pub async fn spawn_agent(
    sock: &Path,
    name: &str,
    caps: Value,
    skills: Value,
) -> Result<(), ClientError> {
    let mut c = Client::connect(sock).await?;
    c.call(
        "register",
        json!({"manifest": {"name": name, "capabilities": caps, "skills": skills}}),
    )
    .await?;
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok(m) = c.next_message().await {
            if serve(&mut c, &name, &m).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

async fn serve(c: &mut Client, name: &str, m: &Value) -> Result<(), ClientError> {
    let task = &m["task_id"];
    match (m["event"].as_str(), m["skill"].as_str()) {
        (Some("request"), Some("echo")) => {
            let out = json!({"text": human(&m["input"]), "by": name});
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": out}),
            )
            .await?;
        }
        (Some("request"), Some("count")) => {
            let n = m["input"].as_u64().unwrap_or(3).min(100);
            for i in 1..=n {
                c.send(
                    "stream",
                    json!({"task_id": task, "chunk": i, "final": i == n}),
                )
                .await?;
            }
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": n}),
            )
            .await?;
        }
        (Some("request"), Some("book")) => {
            c.send(
                "respond",
                json!({"task_id": task, "state": "input_required", "message": "which day?"}),
            )
            .await?;
        }
        (Some("continue"), _) => {
            let out = format!("table booked for {}", human(&m["input"]));
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": out}),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}
