//! Kubernetes Events (events.k8s.io/v1) with repeat detection that stays small at scale.
//!
//! kube's `Recorder` keeps a full copy of every Event it published for six minutes and scans
//! that cache on every publish. Adopting 10,000 VMs publishes 10,000 "Ready" Events, so the
//! cache alone held megabytes and each publish walked all of it. Here a repeat is known by a
//! 64-bit hash of what makes two Events the same, and only the Event's name and count are
//! kept; a repeat within the window becomes a `series` update of the first Event.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// How long a published Event can absorb repeats (kube's Recorder uses the same window).
const WINDOW: Duration = Duration::from_secs(6 * 60);
/// Expired entries are dropped at most this often, not on every publish.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    seen: Mutex<Seen>,
}

struct Seen {
    entries: HashMap<u64, Entry>,
    swept: Instant,
}

struct Entry {
    name: String,
    count: i32,
    last: Instant,
}

/// What one Event says about its object.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// Two Events are the same when they are about the same object (by uid, so a re-created
/// namesake is a different object) and say the same thing.
pub fn repeat_key(regarding: &ObjectReference, n: &Note<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &regarding.kind,
        &regarding.namespace,
        &regarding.name,
        &regarding.uid,
    )
        .hash(&mut h);
    (n.warning, n.reason, n.action, n.note).hash(&mut h);
    h.finish()
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            seen: Mutex::new(Seen {
                entries: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        n: &Note<'_>,
    ) -> Result<(), kube::Error> {
        let key = repeat_key(regarding, n);
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let repeat = {
            let mut seen = self.lock();
            if seen.swept.elapsed() > SWEEP_EVERY {
                seen.entries.retain(|_, e| e.last.elapsed() < WINDOW);
                seen.swept = Instant::now();
            }
            seen.entries
                .get(&key)
                .filter(|e| e.last.elapsed() < WINDOW)
                .map(|e| (e.name.clone(), e.count + 1))
        };
        let now = Timestamp::now();
        if let Some((name, count)) = repeat {
            let series =
                json!({"series": EventSeries { count, last_observed_time: MicroTime(now) }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.remember(key, name, count);
                    return Ok(());
                }
                // The first Event expired on the server meanwhile: start a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(n.action.to_string()),
            reason: Some(n.reason.to_string()),
            note: Some(n.note.chars().take(1000).collect()),
            type_: Some(if n.warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &ev).await?;
        self.remember(key, name, 1);
        Ok(())
    }

    fn remember(&self, key: u64, name: String, count: i32) {
        self.lock().entries.insert(
            key,
            Entry {
                name,
                count,
                last: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("EcsInstance".into()),
            namespace: Some("ns".into()),
            name: Some("web".into()),
            uid: Some(uid.into()),
            resource_version: Some("1".into()),
            ..Default::default()
        }
    }

    fn note<'a>(reason: &'a str, text: &'a str) -> Note<'a> {
        Note {
            warning: true,
            reason,
            action: "Delete",
            note: text,
        }
    }

    #[test]
    fn repeats_are_the_same_object_saying_the_same_thing() {
        let a = repeat_key(&obj("u1"), &note("CloudError", "500"));
        // A status write changes the resourceVersion; it is still the same object.
        let mut newer = obj("u1");
        newer.resource_version = Some("2".into());
        assert_eq!(a, repeat_key(&newer, &note("CloudError", "500")));
        assert_ne!(a, repeat_key(&obj("u2"), &note("CloudError", "500")));
        assert_ne!(a, repeat_key(&obj("u1"), &note("CloudError", "503")));
        assert_ne!(a, repeat_key(&obj("u1"), &note("CloudThrottled", "500")));
        let normal = Note {
            warning: false,
            ..note("CloudError", "500")
        };
        assert_ne!(a, repeat_key(&obj("u1"), &normal));
    }
}
