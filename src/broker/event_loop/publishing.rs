//! Sends the domain table to the frontends (`broker/publish.rs` keeps it
//! and what each frontend is owed; `privsep::replica` is what they do with
//! it).

use super::Broker;
use super::frontends::EVENT_CEILING;
use crate::privsep::{BrokerReply, ListenerKind};

impl Broker {
    /// Sends the table, if it changed, to every serving frontend that does
    /// not have it yet.
    pub(super) fn publish(&mut self) {
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

    /// The frontend in `slot` just started serving: it gets the table now.
    pub(super) fn publish_to(&mut self, slot: usize) {
        self.published.owe(slot);
        self.publish();
    }
}
