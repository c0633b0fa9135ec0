// Turns the QR string WhatsApp asks the phone to scan into an image the
// operator page and the backend can show without any other library.
import QRCode from 'qrcode';

/** @returns {Promise<string>} a data:image/png;base64,… URL */
export function qrToDataUrl(text) {
  return QRCode.toDataURL(text, { errorCorrectionLevel: 'L', margin: 2, width: 264 });
}
