//! Sends the domain table and the statistics snapshots to the frontends
//! (`broker/publish.rs` and `broker/snapshots.rs` keep them and what each
//! frontend is owed; `privsep::replica` and `privsep::snapshot` are what
//! they do with them). The table goes first: a snapshot is used only while
//! the table shows its domain in the state it was taken in.

use super::Broker;
use super::frontends::EVENT_CEILING;
use crate::privsep::{BrokerReply, ListenerKind};

impl Broker {
    /// Sends the table, if it changed, to every serving frontend that does
    /// not have it yet.
    pub(super) fn publish(&mut self) {
        self.publish_table();
        self.publish_snapshots();
    }

    fn publish_table(&mut self) {
        self.published.refresh(&self.setup.ctx.domains, self.frontends.len());
        let owed = self.published.owed();
        if owed.is_empty() {
            return;
        }
        let message = BrokerReply::Replica(self.published.table().clone());
        for slot in owed {
            let Some(s) = self.frontends.get(slot) else {
                self.published.settled(slot);
                continue;
            };
            let serving = s.serving().map(|link| link.channel.queued());
            match serving {
                // Not serving yet: it is owed the table when it starts.
                None => self.published.settled(slot),
                _ if s.class == ListenerKind::Admin => self.published.settled(slot),
                // Not reading: it gets the newest table once it reads again.
                Some(queued) if queued > EVENT_CEILING => {}
                Some(_) => {
                    self.reply(slot, 0, &message, &[]);
                    self.published.settled(slot);
                }
            }
        }
    }

    /// Sends each serving frontend the snapshots it lacks; one that is not
    /// reading gets them once it reads again (the newest, not a queue).
    fn publish_snapshots(&mut self) {
        for slot in 0..self.frontends.len() {
            let s = &self.frontends[slot];
            match s.serving().map(|link| link.channel.queued()) {
                Some(queued) if s.class != ListenerKind::Admin => {
                    if queued > EVENT_CEILING {
                        continue;
                    }
                    for update in self.setup.ctx.snapshots.owed(slot) {
                        self.reply(slot, 0, &BrokerReply::Stats(update), &[]);
                    }
                }
                // Not serving (it starts from an empty copy), or an admin frontend.
                _ => {}
            }
            self.setup.ctx.snapshots.settled(slot);
        }
    }

    /// The frontend in `slot` just started serving: it gets the table and
    /// the snapshots now.
    pub(super) fn publish_to(&mut self, slot: usize) {
        self.published.owe(slot);
        self.setup.ctx.snapshots.owe_all(slot);
        self.publish();
    }
}
