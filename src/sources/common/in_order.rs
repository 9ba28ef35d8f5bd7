//! Releasing acknowledgements in arrival order while confirms come in any order.
//!
//! MQTT wants PUBACKs in the order the PUBLISHes arrived; Kafka may store only the offset
//! of the contiguous confirmed prefix of a partition. Both keep each received item until
//! it and every earlier one are confirmed: a later confirm never moves past an earlier
//! message that is still unconfirmed (or failed and will be redelivered).

use std::collections::VecDeque;

/// Items in arrival order, each waiting for its confirm.
#[derive(Debug)]
pub struct InOrder<T> {
    /// The ticket of the front item.
    front: u64,
    items: VecDeque<(T, bool)>,
}

/// Identifies one pushed item.
pub type Ticket = u64;

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder {
            front: 0,
            items: VecDeque::new(),
        }
    }
}

impl<T> InOrder<T> {
    /// Records an item as it arrives.
    pub fn push(&mut self, item: T) -> Ticket {
        self.items.push_back((item, false));
        self.front + self.items.len() as u64 - 1
    }

    /// Marks an item confirmed and returns the items now free to acknowledge, oldest
    /// first: the confirmed run at the front.
    pub fn confirm(&mut self, ticket: Ticket) -> Vec<T> {
        if let Some(index) = ticket.checked_sub(self.front)
            && let Some(item) = self.items.get_mut(index as usize)
        {
            item.1 = true;
        }
        let mut released = Vec::new();
        while self.items.front().is_some_and(|(_, confirmed)| *confirmed) {
            let (item, _) = self.items.pop_front().expect("checked above");
            released.push(item);
            self.front += 1;
        }
        released
    }

    /// Items received and not yet released.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_in_order_release_at_once() {
        let mut order = InOrder::default();
        let a = order.push("a");
        let b = order.push("b");
        assert_eq!(order.confirm(a), vec!["a"]);
        assert_eq!(order.confirm(b), vec!["b"]);
        assert!(order.is_empty());
    }

    #[test]
    fn a_later_confirm_waits_for_every_earlier_one() {
        let mut order = InOrder::default();
        let tickets: Vec<Ticket> = (0..5).map(|n| order.push(n)).collect();
        assert_eq!(order.confirm(tickets[3]), Vec::<i32>::new());
        assert_eq!(order.confirm(tickets[1]), Vec::<i32>::new());
        assert_eq!(order.confirm(tickets[0]), vec![0, 1]);
        assert_eq!(order.len(), 3);
        assert_eq!(order.confirm(tickets[2]), vec![2, 3]);
        // An item that is never confirmed (it failed) holds everything after it.
        let later = order.push(5);
        assert_eq!(order.confirm(later), Vec::<i32>::new());
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn unknown_or_repeated_tickets_change_nothing() {
        let mut order = InOrder::default();
        let a = order.push('a');
        assert!(order.confirm(a + 7).is_empty());
        assert_eq!(order.confirm(a), vec!['a']);
        assert!(order.confirm(a).is_empty());
        assert!(order.is_empty());
    }
}
