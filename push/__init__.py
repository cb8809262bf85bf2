"""Push notifications through FCM, fed by the transactional outbox (see push/dispatcher.py).

messages: what each event type says and how it is delivered; recipients: who gets it;
preferences: per-user opt-outs and quiet hours; senders: firebase-admin or the log sender;
dispatcher: claims, sends and records with leases and fencing tokens, at least once.
"""
