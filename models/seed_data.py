"""The demo data set that ``plant seed`` loads: plain tables, no logic."""

INDUSTRIES = {
    "MKT": {"name": "Marketing", "description": "Brand, campaigns, content and growth marketing"},
    "FIN": {"name": "Financial Services", "description": "Banking, payments, risk and regulatory reporting"},
    "HLT": {"name": "Healthcare", "description": "Clinical operations, patient data and medical compliance"},
}

# key: (name, category, industry code, description)
SKILLS = {
    "seo-optimization": ("SEO Optimization", "technical", "MKT", "Improves organic search ranking through keyword research, technical audits and content structure."),
    "campaign-analytics": ("Campaign Analytics", "technical", "MKT", "Measures campaign performance with attribution models, funnels and cohort dashboards."),
    "copywriting": ("Persuasive Copywriting", "soft_skill", "MKT", "Writes clear persuasive copy for landing pages, emails and advertising in a brand voice."),
    "brand-strategy": ("Brand Strategy", "domain_expertise", "MKT", "Positions a brand against competitors and keeps messaging consistent across every channel."),
    "social-media": ("Social Media Management", "technical", "MKT", "Plans, schedules and moderates social media content and responds to community feedback."),
    "marketing-compliance": ("Marketing Compliance", "certification", "MKT", "Checks marketing claims and consent handling against advertising and privacy regulation."),
    "risk-modelling": ("Credit Risk Modelling", "technical", "FIN", "Builds and validates statistical models that estimate default probability and credit exposure."),
    "aml-screening": ("AML Screening", "certification", "FIN", "Screens customers and transactions against sanctions lists and anti money laundering rules."),
    "payments-reconciliation": ("Payments Reconciliation", "technical", "FIN", "Matches ledger entries with bank statements and resolves payment breaks every business day."),
    "regulatory-reporting": ("Regulatory Reporting", "domain_expertise", "FIN", "Prepares accurate regulatory returns and explains reported figures to supervisors and auditors."),
    "client-advisory": ("Client Advisory", "soft_skill", "FIN", "Explains financial products to clients plainly and records suitability decisions with care."),
    "fraud-detection": ("Fraud Detection", "technical", "FIN", "Detects fraudulent transactions with rules, anomaly scores and careful case investigation."),
    "clinical-coding": ("Clinical Coding", "certification", "HLT", "Assigns diagnosis and procedure codes to clinical records following national coding standards."),
    "patient-triage": ("Patient Triage", "domain_expertise", "HLT", "Prioritises patient requests by clinical urgency using validated triage protocols and escalation paths."),
    "hipaa-privacy": ("Health Data Privacy", "certification", "HLT", "Protects patient health information and enforces access, consent and retention policies."),
    "medical-summarization": ("Medical Summarization", "technical", "HLT", "Summarises clinical notes into accurate structured handover documents for care teams."),
    "empathetic-communication": ("Empathetic Communication", "soft_skill", "HLT", "Communicates with patients and families with empathy, clarity and cultural sensitivity."),
    "scheduling-optimization": ("Scheduling Optimization", "technical", "HLT", "Optimises appointment and staff schedules to reduce waiting times and idle capacity."),
}

# key: (name, seniority, industry code, required skill keys, description)
JOB_ROLES = {
    "seo-specialist": ("SEO Specialist", "mid", "MKT", ["seo-optimization", "campaign-analytics"], "Owns organic search performance."),
    "content-marketer": ("Content Marketer", "junior", "MKT", ["copywriting", "social-media"], "Produces and distributes marketing content."),
    "brand-lead": ("Brand Lead", "senior", "MKT", ["brand-strategy", "marketing-compliance", "copywriting"], "Leads brand positioning and approvals."),
    "risk-analyst": ("Risk Analyst", "mid", "FIN", ["risk-modelling", "regulatory-reporting"], "Quantifies and reports credit risk."),
    "compliance-officer": ("Compliance Officer", "senior", "FIN", ["aml-screening", "regulatory-reporting"], "Runs financial crime compliance."),
    "payments-operator": ("Payments Operator", "junior", "FIN", ["payments-reconciliation", "fraud-detection"], "Keeps payments flowing and reconciled."),
    "wealth-advisor": ("Wealth Advisor", "senior", "FIN", ["client-advisory", "risk-modelling"], "Advises clients on investments."),
    "clinical-coder": ("Clinical Coder", "mid", "HLT", ["clinical-coding", "hipaa-privacy"], "Codes clinical records for reporting."),
    "triage-nurse-assistant": ("Triage Assistant", "mid", "HLT", ["patient-triage", "empathetic-communication"], "Triages incoming patient requests."),
    "care-coordinator": ("Care Coordinator", "junior", "HLT", ["scheduling-optimization", "medical-summarization", "hipaa-privacy"], "Coordinates schedules and handovers."),
}

# key: (name, job role key, industry code, capacity, description)
TEAMS = {
    "growth-squad": ("Growth Squad", "seo-specialist", "MKT", 5, "Search-led growth experiments."),
    "content-studio": ("Content Studio", "content-marketer", "MKT", 6, "Always-on content production."),
    "risk-desk": ("Risk Desk", "risk-analyst", "FIN", 5, "Credit risk monitoring and reporting."),
    "payments-ops": ("Payments Operations", "payments-operator", "FIN", 8, "Daily payments and reconciliation."),
    "coding-unit": ("Clinical Coding Unit", "clinical-coder", "HLT", 6, "Clinical coding and audit."),
    "front-door": ("Patient Front Door", "triage-nurse-assistant", "HLT", 7, "First contact and triage for patients."),
}

AGENT_FIRST_NAMES = [
    "Ada", "Blaise", "Cleo", "Dorian", "Elif", "Farah", "Gustav", "Hana", "Ivo", "Juno",
    "Kemal", "Lena", "Milo", "Nadia", "Otto", "Priya", "Quinn", "Rosa", "Sami", "Tara",
    "Umar", "Vera", "Wren", "Xavi", "Yara", "Zane", "Amara", "Bruno", "Chiara", "Dev",
    "Esme", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Luca", "Maya", "Nico",
    "Olga", "Pablo", "Rhea", "Soren", "Tomas", "Uma", "Viggo", "Willa", "Ximena", "Yusuf",
]
