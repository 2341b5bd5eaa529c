// An independent MLLP receiver for the receiver-compatibility tests (issue 17): node-hl7-server from npm.
// Listens on 127.0.0.1, port 0 (any free port); prints one JSON line per event on stdout:
//   {"listening": PORT}                 once, when it accepts connections
//   {"received": "MSH-10", "code": C}    for every message its handler sees (replays included)
// Answers every message with ACK code ACK_CODE (argv[2], default AA). Ends on SIGTERM or stdin EOF.
'use strict'
const { Server } = require('node-hl7-server')

const code = process.argv[2] || 'AA'
const server = new Server({ bindAddress: '127.0.0.1' })
const inbound = server.createInbound({ port: 0 }, async (req, res) => {
  const message = req.getMessage()
  const controlId = message.get('MSH.10').toString()
  process.stdout.write(JSON.stringify({ received: controlId, code }) + '\n')
  await res.sendResponse(code)
})
inbound.on('listen', () => {
  process.stdout.write(JSON.stringify({ listening: inbound._socket.address().port }) + '\n')
})
inbound.on('error', (err) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + '\n')
})
const stop = async () => {
  await inbound.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.stdin.on('end', stop)
process.stdin.resume()
